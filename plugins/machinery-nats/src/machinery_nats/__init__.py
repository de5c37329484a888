"""NATS JetStream transport for machinery: the ``nats://host:4222`` broker.

Only the hook implementation and re-exports live here; nats-py is imported by
:mod:`machinery_nats.transport` when a ``nats://`` URL is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery.plugin import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import TransportRegistry
    from machinery_nats.broker import NatsBroker
    from machinery_nats.transport import NatsOptions, NatsTransport

__all__ = ["NatsBroker", "NatsOptions", "NatsTransport"]
_MODULES = {"NatsBroker": "broker", "NatsOptions": "transport", "NatsTransport": "transport"}

#: Environment variables of the ``nats:`` section, declared with the registration as plain
#: data so that reading a configuration does not import nats-py.
ENV_OPTIONS: dict[str, str] = {"NATS_STREAM": "stream", "NATS_ACK_WAIT": "ack_wait"}


@hookimpl
def machinery_register_transports(registry: TransportRegistry) -> None:
    """``nats://`` brokers on JetStream."""
    registry.add("nats", "machinery_nats.transport:NatsTransport", roles={"broker"}, section="nats", env=ENV_OPTIONS)


def __getattr__(name: str) -> object:
    # Lazy re-exports, so that loading the plugin does not import nats-py.
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(f"machinery_nats.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
