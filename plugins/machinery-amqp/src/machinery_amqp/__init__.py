"""machinery-amqp: RabbitMQ broker and AMQP result backend for machinery (``amqp://``, ``amqps://``).

Importing this module registers nothing heavy: the classes are registered by their
``"module:Class"`` names and pika is imported only when a URL is resolved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugins import Register

__all__ = ["machinery_register_backends", "machinery_register_brokers"]

_SCHEMES = ("amqp", "amqps")


@hookimpl
def machinery_register_brokers(register: Register) -> None:
    """``amqp://`` and ``amqps://`` brokers (RabbitMQ)."""
    for scheme in _SCHEMES:
        register(scheme, "machinery_amqp.broker:AMQPBroker")


@hookimpl
def machinery_register_backends(register: Register) -> None:
    """``amqp://`` and ``amqps://`` result backends (Go Machinery's AMQP backend layout)."""
    for scheme in _SCHEMES:
        register(scheme, "machinery_amqp.backend:AMQPBackend")
