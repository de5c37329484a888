"""``memory://`` lock: an owner token and an expiry, per store."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING

from machinery.builtin.memory._store import _locks, _LockStore, _store
from machinery.interfaces import Lock

if TYPE_CHECKING:
    from machinery.config import Config

__all__ = ["MemoryLock"]


class MemoryLock(Lock):
    """In-process lock with expiry."""

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self._s: _LockStore = _store(_locks, url, _LockStore)

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
