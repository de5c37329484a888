"""``TemplateLock``: a lock with expiry, used by the periodic task scheduler.

TEMPLATE: a working in-process example. A real lock must be atomic on the server (``SET NX PX``,
a conditional write...), owned by ``self.owner``, and expire on its own when its holder dies.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from machinery.plugin import Lock
from machinery_template.broker import server_name

if TYPE_CHECKING:
    from machinery.plugin import Config

__all__ = ["TemplateLock"]

# TEMPLATE: stands in for your server: lock name -> key -> (owner, expires at).
_HELD: dict[str, dict[str, tuple[str, float]]] = {}
_HELD_LOCK = threading.Lock()


class TemplateLock(Lock):
    """Lock for ``template://<name>`` URLs; each instance is one owner."""

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        name = server_name(url, "lock")
        with _HELD_LOCK:
            self._held = _HELD.setdefault(name, {})

    def _holder(self, key: str) -> str | None:
        entry = self._held.get(key)
        return entry[0] if entry is not None and entry[1] > time.monotonic() else None

    def acquire(self, key: str, ttl: timedelta) -> bool:
        """Take ``key`` for ``ttl`` unless another owner holds it."""
        with _HELD_LOCK:
            if self._holder(key) not in (None, self.owner):
                return False
            self._held[key] = (self.owner, time.monotonic() + ttl.total_seconds())
            return True

    def release(self, key: str) -> bool:
        """Release ``key`` if this owner holds it."""
        with _HELD_LOCK:
            if self._holder(key) != self.owner:
                return False
            del self._held[key]
            return True

    def extend(self, key: str, ttl: timedelta) -> bool:
        """Push the expiry of ``key`` to ``ttl`` from now, if this owner holds it."""
        with _HELD_LOCK:
            if self._holder(key) != self.owner:
                return False
            self._held[key] = (self.owner, time.monotonic() + ttl.total_seconds())
            return True
