"""Redis transport for machinery: broker, result backend and lock (``redis://``, ``rediss://``,
``redis+socket://``), wire- and key-compatible with Go Machinery.

One :class:`~machinery_redis.transport.RedisTransport` per URL and configuration owns the
options and the connection pool its roles share. The classes are imported lazily, so loading the
plugin does not import redis-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import TransportRegistry
    from machinery_redis.backend import RedisBackend
    from machinery_redis.broker import RedisBroker
    from machinery_redis.lock import RedisLock
    from machinery_redis.transport import RedisTransport

__all__ = ["RedisBackend", "RedisBroker", "RedisLock", "RedisTransport"]

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
_LAZY = {"RedisBroker": "broker", "RedisBackend": "backend", "RedisLock": "lock", "RedisTransport": "transport"}


@hookimpl
def machinery_register_transports(registry: TransportRegistry) -> None:
    """``redis://``, ``rediss://`` and ``redis+socket://``: broker, result backend and lock."""
    registry.add(
        "redis",
        "machinery_redis.transport:RedisTransport",
        roles={"broker", "backend", "lock"},
        section="redis",
        env=ENV_OPTIONS,
        aliases=SCHEMES[1:],
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"machinery_redis.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'machinery_redis' has no attribute {name!r}")
