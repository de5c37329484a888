"""``memory://`` broker: native ETA and priority, on the core's consume template."""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, ClassVar

from machinery.builtin.memory._store import _BrokerStore, _Queue
from machinery.builtin.memory.transport import MemoryTransport
from machinery.consume import PollingBroker
from machinery.interfaces import DeadLetter, Delivery
from machinery.signature import Signature, decode_signature

if TYPE_CHECKING:
    from machinery.config import Config

__all__ = ["MemoryBroker"]


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

    #: The transport class it attaches to when built directly (``eager://`` has its own).
    transport_class: ClassVar[type[MemoryTransport]] = MemoryTransport

    def __init__(self, url: str, config: Config, *, transport: MemoryTransport | None = None) -> None:
        super().__init__(url, config)
        held = type(self).transport_class.attach(self, url, config, transport)
        self.transport = held
        self._s: _BrokerStore = held.connection_for(self).broker

    def close(self) -> None:
        """Release the transport (the store stays for the next server of that name). Idempotent."""
        super().close()
        held = self.transport
        if held is not None:
            held.release(self)

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
