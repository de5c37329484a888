"""Redis transport for machinery: broker, result backend and lock (``redis://``, ``rediss://``,
``redis+socket://``), wire- and key-compatible with Go Machinery.

The classes are imported lazily, so loading the plugin does not import redis-py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import Backend, Broker, Register, Signature
    from machinery_redis.backend import RedisBackend
    from machinery_redis.broker import RedisBroker
    from machinery_redis.lock import RedisLock

__all__ = ["RedisBackend", "RedisBroker", "RedisLock"]

SCHEMES = ("redis", "rediss", "redis+socket")
#: Environment variables of the ``redis:`` section (Go Machinery's names where it has them).
ENV_OPTIONS: dict[str, str] = {
    "REDIS_MAX_IDLE": "max_idle",
    "REDIS_MAX_ACTIVE": "max_active",
    "REDIS_IDLE_TIMEOUT": "idle_timeout",
    "REDIS_WAIT": "wait",
    "REDIS_READ_TIMEOUT": "read_timeout",
    "REDIS_WRITE_TIMEOUT": "write_timeout",
    "REDIS_CONNECT_TIMEOUT": "connect_timeout",
    "REDIS_NORMAL_TASKS_POLL_PERIOD": "normal_tasks_poll_period",
    "REDIS_DELAYED_TASKS_POLL_PERIOD": "delayed_tasks_poll_period",
    "REDIS_DELAYED_TASKS_KEY": "delayed_tasks_key",
    "REDIS_CLIENT_NAME": "client_name",
    "REDIS_MASTER_NAME": "master_name",
    "REDIS_SENTINEL_PASSWORD": "sentinel_password",
    "REDIS_CLUSTER_ENABLED": "cluster_enabled",
    "REDIS_VISIBILITY_TIMEOUT": "visibility_timeout",
    "REDIS_RETRIES": "retries",
}
_LAZY = {"RedisBroker": "broker", "RedisBackend": "backend", "RedisLock": "lock"}


@hookimpl
def machinery_register_brokers(register: Register) -> None:
    """``redis://``, ``rediss://`` and ``redis+socket://`` brokers."""
    for scheme in SCHEMES:
        register(scheme, "machinery_redis.broker:RedisBroker", section="redis", env=ENV_OPTIONS)


@hookimpl
def machinery_register_backends(register: Register) -> None:
    """``redis://``, ``rediss://`` and ``redis+socket://`` result backends."""
    for scheme in SCHEMES:
        register(scheme, "machinery_redis.backend:RedisBackend", section="redis", env=ENV_OPTIONS)


@hookimpl
def machinery_register_locks(register: Register) -> None:
    """``redis://``, ``rediss://`` and ``redis+socket://`` locks."""
    for scheme in SCHEMES:
        register(scheme, "machinery_redis.lock:RedisLock", section="redis", env=ENV_OPTIONS)


@hookimpl
def machinery_fused_publisher(broker: Broker, backend: Backend) -> Callable[[bytes, Signature], None] | None:
    """PENDING and the message in one pipeline, for a Redis broker and backend sharing a client."""
    # Neither class can be in use unless its module was imported: no redis-py import here.
    if "machinery_redis.broker" not in sys.modules or "machinery_redis.backend" not in sys.modules:
        return None
    from machinery_redis.backend import RedisBackend
    from machinery_redis.broker import RedisBroker

    if type(broker) is not RedisBroker or type(backend) is not RedisBackend:
        return None
    return broker.fused_publisher(backend)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"machinery_redis.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'machinery_redis' has no attribute {name!r}")
