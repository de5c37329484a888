"""``memory://`` lock: an owner token and an expiry, per store."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar

from machinery.builtin.memory._store import _LockStore
from machinery.builtin.memory.transport import MemoryTransport
from machinery.interfaces import Lock

if TYPE_CHECKING:
    from machinery.config import Config

__all__ = ["MemoryLock"]


class MemoryLock(Lock):
    """In-process lock with expiry."""

    #: The transport class it attaches to when built directly (``eager://`` has its own).
    transport_class: ClassVar[type[MemoryTransport]] = MemoryTransport

    def __init__(self, url: str, config: Config, *, transport: MemoryTransport | None = None) -> None:
        super().__init__(url, config)
        held = type(self).transport_class.attach(self, url, config, transport)
        self.transport = held
        self._s: _LockStore = held.connection_for(self).lock

    def close(self) -> None:
        """Release the transport (the store stays for the next server of that name). Idempotent."""
        super().close()
        held = self.transport
        if held is not None:
            held.release(self)

    def acquire(self, key: str, ttl: timedelta) -> bool:
        """Take the key unless another owner holds an unexpired claim."""
        now = time.monotonic()
        with self._s.lock:
            held = self._s.held.get(key)
            if held is not None and held[1] > now and held[0] != self.owner:
                return False
            self._s.held[key] = (self.owner, now + ttl.total_seconds())
            return True

    def release(self, key: str) -> bool:
        """Release the key if this owner holds it."""
        with self._s.lock:
            held = self._s.held.get(key)
            if held is None or held[0] != self.owner or held[1] <= time.monotonic():
                return False
            del self._s.held[key]
            return True

    def extend(self, key: str, ttl: timedelta) -> bool:
        """Extend the key if this owner holds it."""
        now = time.monotonic()
        with self._s.lock:
            held = self._s.held.get(key)
            if held is None or held[0] != self.owner or held[1] <= now:
                return False
            self._s.held[key] = (self.owner, now + ttl.total_seconds())
            return True
