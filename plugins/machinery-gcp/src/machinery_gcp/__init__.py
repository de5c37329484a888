"""Google Cloud Pub/Sub transport for machinery: the ``gcppubsub://PROJECT/SUBSCRIPTION`` broker.

Only hook implementations and re-exports live here; the Pub/Sub client library is imported by
:mod:`machinery_gcp.transport` when a ``gcppubsub://`` URL is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import TransportRegistry
    from machinery_gcp.broker import GCPPubSubBroker
    from machinery_gcp.transport import GCPPubSubError, GCPPubSubOptions, GCPPubSubTransport

__all__ = ["GCPPubSubBroker", "GCPPubSubError", "GCPPubSubOptions", "GCPPubSubTransport"]
_MODULES = {
    "GCPPubSubBroker": "broker",
    "GCPPubSubError": "transport",
    "GCPPubSubOptions": "transport",
    "GCPPubSubTransport": "transport",
}


@hookimpl
def machinery_register_transports(registry: TransportRegistry) -> None:
    """``gcppubsub://PROJECT_ID/SUBSCRIPTION_NAME`` broker."""
    registry.add("gcppubsub", "machinery_gcp.transport:GCPPubSubTransport", roles={"broker"}, section="gcp_pubsub")


def __getattr__(name: str) -> object:
    # Lazy re-exports, so that loading the plugin does not import google-cloud-pubsub.
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(f"machinery_gcp.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
