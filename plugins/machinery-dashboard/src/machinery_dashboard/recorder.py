"""The events recorder: the worker side of the dashboard.

The lifecycle hooks append a :class:`~machinery_dashboard.store.Change` to an in-memory queue
(a few microseconds in the task thread, plus encoding the signature once, at RECEIVED); a
daemon thread writes the queue to the store every :data:`FLUSH_INTERVAL` seconds in one
transaction or pipeline. A worker that stops flushes what is left. A worker killed with
``kill -9`` loses at most the last interval's events: the log is for looking, the backend's
states remain the truth (the dashboard reads them too).

Set ``MACHINERY_DASHBOARD_RECORD=0`` to turn the recorder off in a worker.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING

from machinery.signature import encode_signature
from machinery_dashboard.store import Change, EventStore, store_for

if TYPE_CHECKING:
    from machinery.events import TaskEvent, WorkerEvent
    from machinery.signature import Signature

__all__ = ["FLUSH_INTERVAL", "Recorder", "enabled", "recorder_for", "start", "stop"]

log = logging.getLogger("machinery.dashboard")

#: Seconds between two writes of the queued events.
FLUSH_INTERVAL = 0.25
#: Events queued at most; beyond, the oldest are dropped (a store that is down must not grow
#: the worker's memory without bound). Dropped events are counted and logged.
MAX_QUEUED = 100_000
#: Longest error, traceback or results text kept per task.
MAX_TEXT = 8000


def enabled() -> bool:
    """False when ``MACHINERY_DASHBOARD_RECORD`` is ``0``, ``false`` or ``no``."""
    return os.environ.get("MACHINERY_DASHBOARD_RECORD", "1").strip().lower() not in ("0", "false", "no", "off")


def _children(sig: Signature) -> tuple[str, ...]:
    out = [s.uuid for s in sig.on_success if s.uuid]
    out += [s.uuid for s in sig.on_error if s.uuid]
    if sig.chord_callback is not None and sig.chord_callback.uuid:
        out.append(sig.chord_callback.uuid)
    return tuple(out)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "\n[... cut]"


class Recorder:
    """Queues changes and writes them to ``store`` from a daemon thread.

    :param store: where to write.
    """

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._queue: deque[Change] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._users = 0
        self._lock = threading.Lock()
        self.dropped = 0
        self.written = 0

    # -- the hooks' side ------------------------------------------------------------------------

    def add(self, change: Change) -> None:
        """Queue one change (never blocks, never raises)."""
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(change)

    def task_event(self, kind: str, event: TaskEvent) -> None:
        """Turn a lifecycle event into a change and queue it.

        :param kind: ``received``, ``started``, ``succeeded``, ``failed`` or ``retried``.
        """
        sig = event.signature
        now = time.time()
        c = Change(uuid=sig.uuid, state="", at=now, worker=event.consumer_tag or None)
        if kind == "received":
            c.state, c.received = "RECEIVED", now
            c.name, c.queue, c.group_uuid = sig.name, sig.routing_key or None, sig.group_uuid or None
            c.signature, c.children = encode_signature(sig), _children(sig)
        elif kind == "started":
            c.state, c.started = "STARTED", now
        elif kind == "succeeded":
            c.state, c.finished, c.runtime = "SUCCESS", now, event.runtime
            c.results = _clip(json.dumps([{"type": r.type, "value": r.value} for r in event.results], default=repr))
        elif kind == "failed":
            c.state, c.finished = "FAILURE", now
            c.name, c.queue, c.group_uuid = sig.name, sig.routing_key or None, sig.group_uuid or None
            c.signature, c.children = encode_signature(sig), _children(sig)  # it may never have been received
            c.error, c.traceback = _clip(event.error), _clip(event.traceback) or None
            if event.runtime:
                c.runtime = event.runtime
        elif kind == "retried":
            c.state, c.retried = "RETRY", 1
            c.error, c.traceback = _clip(event.error), _clip(event.traceback) or None
        else:  # pragma: no cover - the hooks pass one of the above
            return
        self.add(c)

    # -- the writer's side ----------------------------------------------------------------------

    def flush(self) -> int:
        """Write everything queued now; returns how many changes were written."""
        batch: list[Change] = []
        while self._queue and len(batch) < 5000:
            batch.append(self._queue.popleft())
        if not batch:
            return 0
        counts = Counter((int(c.at // 60), c.state) for c in batch)
        try:
            self.store.write(batch, counts)
            self.store.maybe_trim(time.time())
        except Exception as exc:  # noqa: BLE001 - a dashboard must never break a worker
            log.warning("dashboard recorder: could not write %d events (%s); they are dropped", len(batch), exc)
            self.dropped += len(batch)
            return 0
        self.written += len(batch)
        return len(batch)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(FLUSH_INTERVAL)
            while self.flush():
                pass
        while self.flush():
            pass

    def start(self) -> None:
        """Start the writer thread (once per worker using it)."""
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="machinery-dashboard-recorder", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Flush and stop the writer thread when the last worker using it stopped."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._thread is None:
                return
            thread, self._thread = self._thread, None
        self._stop.set()
        thread.join(timeout=10)
        if self.dropped:
            log.warning("dashboard recorder: %d events were dropped", self.dropped)


_recorders: dict[str, Recorder] = {}
_by_store: dict[str, Recorder] = {}
_guard = threading.Lock()


def start(event: WorkerEvent) -> None:
    """Attach a recorder to the worker that started (one per backend URL and process)."""
    worker = event.worker
    if worker is None or not enabled():
        return
    backend = worker.server.backend
    key = f"{os.getpid()}:{type(backend).__name__}:{worker.server.backend_url}"
    with _guard:
        rec = _by_store.get(key)
        if rec is None:
            try:
                store = store_for(backend)
            except Exception as exc:  # noqa: BLE001 - never stop a worker
                log.warning("dashboard recorder: off (%s)", exc)
                return
            if store is None:
                log.info(
                    "dashboard recorder: the %s backend keeps no dashboard event log (sqlite:// and redis:// do)",
                    type(backend).__name__,
                )
                return
            rec = _by_store[key] = Recorder(store)
        _recorders[event.consumer_tag] = rec
    rec.start()


def stop(event: WorkerEvent) -> None:
    """Flush and detach the recorder of the worker that stopped."""
    with _guard:
        rec = _recorders.pop(event.consumer_tag, None)
    if rec is not None:
        rec.stop()


def recorder_for(consumer_tag: str) -> Recorder | None:
    """The recorder of the worker with this consumer tag."""
    return _recorders.get(consumer_tag)
