"""machinery-amqp: RabbitMQ broker and AMQP result backend for machinery (``amqp://``, ``amqps://``).

Importing this module registers nothing heavy: the classes are registered by their
``"module:Class"`` names and pika is imported only when a URL is resolved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import Register

__all__ = ["machinery_register_backends", "machinery_register_brokers"]

_SCHEMES = ("amqp", "amqps")
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
def machinery_register_brokers(register: Register) -> None:
    """``amqp://`` and ``amqps://`` brokers (RabbitMQ)."""
    for scheme in _SCHEMES:
        register(scheme, "machinery_amqp.broker:AMQPBroker", section="amqp", env=ENV_OPTIONS)


@hookimpl
def machinery_register_backends(register: Register) -> None:
    """``amqp://`` and ``amqps://`` result backends (Go Machinery's AMQP backend layout)."""
    for scheme in _SCHEMES:
        register(scheme, "machinery_amqp.backend:AMQPBackend", section="amqp", env=ENV_OPTIONS)
