"""The Redis lock: ``SET key token NX PX ttl``; release and extend only by the holder (Lua).

Used by the periodic scheduler so that one tick fires once however many schedulers run.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.plugin import Lock, LockError
from machinery_redis.transport import ENV_OPTIONS, RedisTransport, translate_errors

if TYPE_CHECKING:
    from machinery.plugin import Config

__all__ = ["RedisLock"]

# KEYS[1]: lock key. ARGV: token, ttl ms. Take it if free; renew it if we already hold it.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class RedisLock(Lock):
    """A lock per key with expiry; each instance is one owner (its random token).

    :param url: ``redis://``, ``rediss://`` or ``redis+socket://`` (see :mod:`machinery_redis`).
    :param config: the core config.
    :param transport: the transport handing this lock out (default: the shared one).
    """

    config_section: ClassVar[str | None] = "redis"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS

    def __init__(self, url: str, config: Config, *, transport: RedisTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport whose pool this lock uses.
        self.transport: RedisTransport = RedisTransport.attach(self, url, config, transport)
        self._released = False
        self._scripts: dict[str, Any] = {}

    def _run(self, what: str, text: str, key: str, *args: Any) -> bool:
        if self._released:  # used again after close: hold the transport again
            self._released = False
            self.transport.retain(self)
        with translate_errors(f"{what} lock {key!r}", self.url, LockError, LockError):
            script = self._scripts.get(what)
            if script is None:
                script = self._scripts[what] = self.transport.client.register_script(text)
            return bool(script(keys=[key], args=[self.owner, *args]))

    @staticmethod
    def _ms(ttl: timedelta) -> int:
        ms = int(ttl.total_seconds() * 1000)
        if ms <= 0:
            raise ValueError(f"lock ttl must be positive, got {ttl}")
        return ms

    def acquire(self, key: str, ttl: timedelta) -> bool:
        """Take ``key`` for ``ttl`` unless another owner holds it (renew it if we do)."""
        return self._run("acquire", _ACQUIRE, key, self._ms(ttl))

    def release(self, key: str) -> bool:
        """Delete ``key`` if this owner holds it."""
        return self._run("release", _RELEASE, key)

    def extend(self, key: str, ttl: timedelta) -> bool:
        """Set ``key``'s expiry to ``ttl`` from now if this owner holds it."""
        return self._run("extend", _EXTEND, key, self._ms(ttl))

    def close(self) -> None:
        """Release this lock's share of the connection pool. Idempotent."""
        self._released = True
        self.transport.release(self)
