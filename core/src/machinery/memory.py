"""The in-process ``memory://`` transport: broker, backend and lock for tests and embedding.

Everything lives in this process; ``memory://name`` selects a named store shared by every
server in the process that uses the same name (``memory://`` is the unnamed one). It honours
ETA, priority, queues, result expiry and the exactly-once chord trigger, with real threads.
It cannot survive the process, so it declares ``redelivers_unacked = False``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from machinery._hookimpl import hookimpl
from machinery.consume import PollingBroker
from machinery.interfaces import Backend, DeadLetter, Delivery, Lock
from machinery.signature import Signature, decode_signature
from machinery.state import GroupMeta, TaskState

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.plugins import Register
    from machinery.revoke import Revocation

__all__ = ["MemoryBackend", "MemoryBroker", "MemoryLock", "reset"]


@dataclass
class _Queue:
    ready: list[tuple[int, int, bytes]] = field(default_factory=list)  # (-priority, seq, body)


@dataclass
class _BrokerStore:
    cond: threading.Condition = field(default_factory=threading.Condition)
    queues: dict[str, _Queue] = field(default_factory=dict)
    delayed: list[tuple[float, int, str, int, bytes]] = field(default_factory=list)  # (due, seq, queue, prio, body)
    unacked: dict[int, tuple[str, int, bytes]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)


@dataclass
class _BackendStore:
    cond: threading.Condition = field(default_factory=threading.Condition)
    records: dict[str, tuple[float, Any]] = field(default_factory=dict)  # uuid -> (expires_at, record)
    workers: dict[str, tuple[float, bytes]] = field(default_factory=dict)  # worker id -> (expires_at, record)
    revoked: dict[str, tuple[int, bool, float]] = field(default_factory=dict)  # uuid -> (seq, terminate, expires_at)
    revoked_seq: int = 0
    rates: Any = None  # LocalRateLimiter, created on first use


@dataclass
class _LockStore:
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: dict[str, tuple[str, float]] = field(default_factory=dict)


_brokers: dict[str, _BrokerStore] = {}
_backends: dict[str, _BackendStore] = {}
_locks: dict[str, _LockStore] = {}
_registry_lock = threading.Lock()


def _name(url: str) -> str:
    return url.partition("://")[2].strip("/")


def _store(table: dict[str, Any], url: str, factory: type[Any]) -> Any:
    name = _name(url)
    with _registry_lock:
        st = table.get(name)
        if st is None:
            st = table[name] = factory()
        return st


def reset() -> None:
    """Forget every memory store in this process (for tests)."""
    with _registry_lock:
        _brokers.clear()
        _backends.clear()
        _locks.clear()


class MemoryBroker(PollingBroker):
    """In-process broker with native ETA and priority, on the core's consume template."""

    #: Stop is noticed within 0.1 s (the store wakes fetches on publish and ETA).
    fetch_wait: ClassVar[float] = 0.1

    supports_native_delay: ClassVar[bool] = True
    supports_priority: ClassVar[bool] = True
    supports_pending_listing: ClassVar[bool] = True
    supports_delayed_listing: ClassVar[bool] = True
    supports_dead_letters: ClassVar[bool] = True
    redelivers_unacked: ClassVar[bool] = False

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self._s: _BrokerStore = _store(_brokers, url, _BrokerStore)

    def publish(self, body: bytes, signature: Signature) -> None:
        """Queue the message (or hold it until its ETA)."""
        s = self._s
        queue = self.queue_for(signature)
        with s.cond:
            seq = next(s.seq)
            eta = signature.eta
            if eta is not None:
                due = eta.timestamp()
                if due > time.time():
                    heapq.heappush(s.delayed, (due, seq, queue, signature.priority, body))
                    s.cond.notify_all()
                    return
            q = s.queues.get(queue)
            if q is None:
                q = s.queues[queue] = _Queue()
            heapq.heappush(q.ready, (-signature.priority, seq, body))
            s.cond.notify_all()

    def _promote_due(self, now: float) -> float | None:
        s = self._s
        while s.delayed and s.delayed[0][0] <= now:
            _, seq, queue, prio, body = heapq.heappop(s.delayed)
            q = s.queues.get(queue)
            if q is None:
                q = s.queues[queue] = _Queue()
            heapq.heappush(q.ready, (-prio, seq, body))
        return s.delayed[0][0] if s.delayed else None

    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        """Take up to ``max_n`` ready messages, waking on publish or ETA."""
        s = self._s
        deadline = time.time() + wait
        with s.cond:
            while True:
                now = time.time()
                next_due = self._promote_due(now)
                q = s.queues.get(queue)
                if q is not None and q.ready:
                    out: list[Delivery] = []
                    while q.ready and len(out) < max_n:
                        prio, seq, body = heapq.heappop(q.ready)
                        s.unacked[seq] = (queue, -prio, body)
                        out.append(Delivery(body=body, queue=queue, tag=seq))
                    return out
                left = deadline - now
                if left <= 0:
                    return []
                s.cond.wait(left if next_due is None else max(0.0, min(left, next_due - now)))

    def _take(self, delivery: Delivery) -> tuple[str, int, bytes] | None:
        return self._s.unacked.pop(delivery.tag, None)

    def _ack(self, delivery: Delivery) -> None:
        with self._s.cond:
            self._take(delivery)

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        s = self._s
        with s.cond:
            for d in deliveries:
                entry = self._take(d)
                if entry is not None:
                    queue, prio, body = entry
                    q = s.queues.setdefault(queue, _Queue())
                    heapq.heappush(q.ready, (-prio, next(s.seq), body))
            s.cond.notify_all()

    def _defer(self, delivery: Delivery, delay: float) -> None:
        s = self._s
        with s.cond:
            entry = self._take(delivery)
            if entry is not None:
                queue, prio, body = entry
                heapq.heappush(s.delayed, (time.time() + delay, next(s.seq), queue, prio, body))
            s.cond.notify_all()

    def _dead_letter(self, delivery: Delivery) -> None:
        s = self._s
        with s.cond:
            entry = self._take(delivery)
            if entry is not None:
                queue, _, body = entry
                s.dead.append(DeadLetter(str(next(s.seq)), queue, body, datetime.now(timezone.utc)))

    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        """Waiting signatures in delivery order."""
        with self._s.cond:
            q = self._s.queues.get(queue or self.default_queue)
            items = sorted(q.ready) if q else []
        return [decode_signature(b) for _, _, b in items]

    def delayed_tasks(self) -> list[Signature]:
        """Held signatures, soonest first."""
        with self._s.cond:
            items = sorted(self._s.delayed)
        return [decode_signature(b) for *_, b in items]

    def purge(self, queue: str | None = None) -> int:
        """Drop the queue's waiting messages."""
        with self._s.cond:
            q = self._s.queues.pop(queue or self.default_queue, None)
            return len(q.ready) if q else 0

    def dead_letters(self) -> list[bytes]:
        """Messages dropped with ``nack(requeue=False)`` (malformed, unregistered...)."""
        with self._s.cond:
            return [d.body for d in self._s.dead]

    def list_dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """The dead letters (of every queue when ``queue`` is None), oldest first."""
        with self._s.cond:
            return [d for d in self._s.dead if queue is None or d.queue == queue]

    def remove_dead_letter(self, letter: DeadLetter) -> bool:
        """Forget one dead letter; False when it was already gone."""
        with self._s.cond:
            for i, d in enumerate(self._s.dead):
                if d.id == letter.id:
                    del self._s.dead[i]
                    return True
        return False


class MemoryBackend(Backend):
    """In-process result backend; :meth:`wait_for` blocks on a condition instead of polling."""

    persistent: ClassVar[bool] = False
    supports_worker_registry: ClassVar[bool] = True
    supports_revocation: ClassVar[bool] = True
    supports_rate_limit: ClassVar[bool] = True

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self._s: _BackendStore = _store(_backends, url, _BackendStore)

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


@hookimpl
def machinery_register_brokers(register: Register) -> None:
    """``memory://`` broker, and ``eager://`` (:mod:`machinery.eager`: tasks run when sent)."""
    register("memory", MemoryBroker)
    register("eager", "machinery.eager:EagerBroker", section="")  # reads no section


@hookimpl
def machinery_register_backends(register: Register) -> None:
    """``memory://`` backend, and ``eager://`` (an in-process one for eager mode)."""
    register("memory", MemoryBackend)
    register("eager", "machinery.eager:EagerBackend", section="")  # reads no section


@hookimpl
def machinery_register_locks(register: Register) -> None:
    """``memory://`` lock, and ``eager://``."""
    register("memory", MemoryLock)
    register("eager", "machinery.eager:EagerLock", section="")  # reads no section
