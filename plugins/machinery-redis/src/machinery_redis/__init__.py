"""Redis transport for machinery: broker, result backend and lock (``redis://``, ``rediss://``,
``redis+socket://``), wire- and key-compatible with Go Machinery.

The classes are imported lazily, so loading the plugin does not import redis-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugins import Register
    from machinery_redis.backend import RedisBackend
    from machinery_redis.broker import RedisBroker
    from machinery_redis.lock import RedisLock

__all__ = ["RedisBackend", "RedisBroker", "RedisLock"]

SCHEMES = ("redis", "rediss", "redis+socket")
_LAZY = {"RedisBroker": "broker", "RedisBackend": "backend", "RedisLock": "lock"}


@hookimpl
def machinery_register_brokers(register: Register) -> None:
    """``redis://``, ``rediss://`` and ``redis+socket://`` brokers."""
    for scheme in SCHEMES:
        register(scheme, "machinery_redis.broker:RedisBroker")


@hookimpl
def machinery_register_backends(register: Register) -> None:
    """``redis://``, ``rediss://`` and ``redis+socket://`` result backends."""
    for scheme in SCHEMES:
        register(scheme, "machinery_redis.backend:RedisBackend")


@hookimpl
def machinery_register_locks(register: Register) -> None:
    """``redis://``, ``rediss://`` and ``redis+socket://`` locks."""
    for scheme in SCHEMES:
        register(scheme, "machinery_redis.lock:RedisLock")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"machinery_redis.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'machinery_redis' has no attribute {name!r}")
