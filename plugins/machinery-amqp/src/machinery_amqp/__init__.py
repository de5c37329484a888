"""machinery-amqp: RabbitMQ broker and AMQP result backend for machinery (``amqp://``, ``amqps://``).

Importing this module registers nothing heavy: the transport is registered by its
``"module:Class"`` name and pika is imported only when a URL is resolved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import TransportRegistry

__all__ = ["machinery_register_transports"]

#: Environment variables of the ``amqp:`` section.
ENV_OPTIONS: dict[str, str] = {
    "AMQP_EXCHANGE": "exchange",
    "AMQP_EXCHANGE_TYPE": "exchange_type",
    "AMQP_BINDING_KEY": "binding_key",
    "AMQP_PREFETCH_COUNT": "prefetch_count",
    "AMQP_QUEUE_DECLARE_ARGS": "queue_declare_args",
    "AMQP_QUEUE_BINDING_ARGS": "queue_binding_args",
    "AMQP_AUTO_DELETE": "auto_delete",
    "AMQP_DELAYED_QUEUE": "delayed_queue",
    "AMQP_MAX_PRIORITY": "max_priority",
    "AMQP_QUEUE_TYPE": "queue_type",
    "AMQP_HEARTBEAT": "heartbeat",
    "AMQP_CONFIRM_TIMEOUT": "confirm_timeout",
}


@hookimpl
def machinery_register_transports(registry: TransportRegistry) -> None:
    """``amqp://`` and ``amqps://``: broker (RabbitMQ) and result backend (Go Machinery's AMQP
    backend layout)."""
    registry.add(
        "amqp",
        "machinery_amqp.transport:AMQPTransport",
        roles={"broker", "backend"},
        section="amqp",
        env=ENV_OPTIONS,
        aliases=("amqps",),
    )
