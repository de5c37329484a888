"""``memory://`` result backend: records with expiry, worker registry, revocations, rate limits."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.builtin.memory._store import _BackendStore
from machinery.builtin.memory.transport import MemoryTransport
from machinery.interfaces import Backend
from machinery.state import GroupMeta, TaskState

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.revoke import Revocation

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """In-process result backend; :meth:`wait_for` blocks on a condition instead of polling."""

    persistent: ClassVar[bool] = False
    supports_worker_registry: ClassVar[bool] = True
    supports_revocation: ClassVar[bool] = True
    supports_rate_limit: ClassVar[bool] = True

    #: The transport class it attaches to when built directly (``eager://`` has its own).
    transport_class: ClassVar[type[MemoryTransport]] = MemoryTransport

    def __init__(self, url: str, config: Config, *, transport: MemoryTransport | None = None) -> None:
        super().__init__(url, config)
        held = type(self).transport_class.attach(self, url, config, transport)
        self.transport = held
        self._s: _BackendStore = held.connection_for(self).backend

    def close(self) -> None:
        """Release the transport (the store stays for the next server of that name). Idempotent."""
        super().close()
        held = self.transport
        if held is not None:
            held.release(self)

    def _expiry(self) -> float:
        secs = self.lifetime()
        return time.monotonic() + secs if secs is not None else float("inf")

    def _get(self, uuid: str) -> Any:
        entry = self._s.records.get(uuid)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._s.records.pop(uuid, None)
            return None
        return entry[1]

    def _store_state(self, state: TaskState) -> None:
        with self._s.cond:
            self._s.records[state.task_uuid] = (self._expiry(), state)
            self._s.cond.notify_all()

    def _load_state(self, task_uuid: str) -> TaskState | None:
        rec = self._get(task_uuid)
        return rec if isinstance(rec, TaskState) else None

    def _store_group(self, meta: GroupMeta) -> None:
        with self._s.cond:
            self._s.records[meta.group_uuid] = (self._expiry(), meta)

    def _load_group(self, group_uuid: str) -> GroupMeta | None:
        rec = self._get(group_uuid)
        return rec if isinstance(rec, GroupMeta) else None

    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        with self._s.cond:
            meta = self._load_group(group_uuid)
            if meta is None or meta.chord_triggered:
                return False
            meta.chord_triggered = True
            return True

    def _delete(self, uuid: str) -> None:
        with self._s.cond:
            self._s.records.pop(uuid, None)

    def _load_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        return [self._load_state(u) for u in task_uuids]

    def register_worker(self, worker_id: str, record: bytes, ttl: timedelta) -> None:
        """Keep the record until ``ttl`` runs out (monotonic clock)."""
        with self._s.cond:
            self._s.workers[worker_id] = (time.monotonic() + ttl.total_seconds(), bytes(record))

    def unregister_worker(self, worker_id: str) -> None:
        """Forget the record."""
        with self._s.cond:
            self._s.workers.pop(worker_id, None)

    def list_workers(self) -> list[bytes]:
        """The unexpired records (expired ones are dropped)."""
        now = time.monotonic()
        with self._s.cond:
            for wid in [w for w, (exp, _) in self._s.workers.items() if exp <= now]:
                del self._s.workers[wid]
            return [rec for _, rec in self._s.workers.values()]

    def revoke(self, task_uuids: Sequence[str], *, terminate: bool, ttl: timedelta | None) -> None:
        """Record the revocations with the next sequence numbers (monotonic expiry)."""
        s = self._s
        now = time.monotonic()
        expires = now + ttl.total_seconds() if ttl is not None else float("inf")
        with s.cond:
            for uuid in [u for u, (_, _, exp) in s.revoked.items() if exp <= now]:
                del s.revoked[uuid]
            for uuid in task_uuids:
                old = s.revoked.get(uuid)
                s.revoked_seq += 1
                s.revoked[uuid] = (s.revoked_seq, terminate or (old is not None and old[1]), expires)

    def revocations_since(self, cursor: int, limit: int = 1000) -> tuple[list[Revocation], int]:
        """The live revocations numbered after ``cursor``."""
        from machinery.revoke import Revocation

        s = self._s
        now = time.monotonic()
        with s.cond:
            if s.revoked_seq < cursor:  # the store was reset
                cursor = 0
            rows = sorted((seq, uuid, term, exp) for uuid, (seq, term, exp) in s.revoked.items() if seq > cursor)
        rows = rows[:limit]
        forever = float("inf")
        out = [Revocation(u, term, None if exp == forever else exp - now) for _, u, term, exp in rows if exp > now]
        return out, (rows[-1][0] if rows else cursor)

    def rate_limit_reserve(self, key: str, interval: float, max_wait: float) -> tuple[bool, float]:
        """Reserve under a lock (shared by every server of this process using the same store)."""
        from machinery.ratelimit import LocalRateLimiter

        s = self._s
        if s.rates is None:
            with s.cond:
                if s.rates is None:
                    s.rates = LocalRateLimiter()
        result: tuple[bool, float] = s.rates.reserve(key, interval, max_wait)
        return result

    def wait_for(self, task_uuid: str, timeout: float, poll_interval: float = 0.05) -> TaskState | None:
        """Block on the store's condition until the task completes or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._s.cond:
            while True:
                st = self._load_state(task_uuid)
                remaining = deadline - time.monotonic()
                if (st is not None and st.is_completed) or remaining <= 0:
                    return st
                self._s.cond.wait(remaining)
