"""NATS JetStream transport for machinery: the ``nats://host:4222`` broker.

Only the hook implementation and re-exports live here; nats-py is imported by
:mod:`machinery_nats.broker` when a broker is first built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery.plugin import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import Register
    from machinery_nats.broker import NatsBroker, NatsOptions

__all__ = ["NatsBroker", "NatsOptions"]

#: Environment variables of the ``nats:`` section, declared with the registration as plain
#: data so that reading a configuration does not import nats-py.
ENV_OPTIONS: dict[str, str] = {"NATS_STREAM": "stream", "NATS_ACK_WAIT": "ack_wait"}


@hookimpl
def machinery_register_brokers(register: Register) -> None:
    """``nats://`` brokers on JetStream."""
    register("nats", "machinery_nats.broker:NatsBroker", section="nats", env=ENV_OPTIONS)


def __getattr__(name: str) -> object:
    # Lazy re-exports, so that loading the plugin does not import nats-py.
    if name in __all__:
        from machinery_nats import broker

        return getattr(broker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
