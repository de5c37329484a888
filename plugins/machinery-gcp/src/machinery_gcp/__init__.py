"""Google Cloud Pub/Sub transport for machinery: the ``gcppubsub://PROJECT/SUBSCRIPTION`` broker.

Only hook implementations and re-exports live here; the Pub/Sub client library is imported by
:mod:`machinery_gcp.broker` when a broker is first built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import Register
    from machinery_gcp.broker import GCPPubSubBroker, GCPPubSubError, GCPPubSubOptions

__all__ = ["GCPPubSubBroker", "GCPPubSubError", "GCPPubSubOptions"]


@hookimpl
def machinery_register_brokers(register: Register) -> None:
    """``gcppubsub://PROJECT_ID/SUBSCRIPTION_NAME`` broker."""
    register("gcppubsub", "machinery_gcp.broker:GCPPubSubBroker", section="gcp_pubsub")


def __getattr__(name: str) -> object:
    # Lazy re-exports, so that loading the plugin does not import google-cloud-pubsub.
    if name in __all__:
        from machinery_gcp import broker

        return getattr(broker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
