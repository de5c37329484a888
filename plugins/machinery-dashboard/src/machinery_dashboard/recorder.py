"""The events recorder: the worker side of the dashboard.

The lifecycle hooks of the outcomes (succeeded, failed, retried: one event per attempt, which
carries the whole signature and the run time, so RECEIVED and STARTED need no hook: a running
task's state is the backend's) only append the event to an in-memory queue; a daemon thread encodes
the queue every :data:`FLUSH_INTERVAL` seconds into batches of JSON (:func:`encode_event`) and
appends each to the event log in the backend's store (:mod:`machinery_dashboard.log`): one
write per batch, whatever the task rate. Dashboards merge the batches into their index. A
worker that stops flushes what is left; a worker killed with ``kill -9`` loses at most the last
interval's events: the log is for looking, the backend's states remain the truth (the dashboard reads them too).

Set ``MACHINERY_DASHBOARD_RECORD=0`` to turn the recorder off in a worker.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from machinery_dashboard.log import BATCH_EVENTS, EventLog, log_for

if TYPE_CHECKING:
    from machinery.plugin import TaskEvent, WorkerEvent

__all__ = ["FLUSH_INTERVAL", "Recorder", "enabled", "encode_event", "recorder_for", "start", "stop"]

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


#: One encoder for every batch (``json.dumps`` with options builds a new one per call).
_encode = json.JSONEncoder(separators=(",", ":"), default=repr).encode


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "\n[... cut]"


def encode_event(kind: str, event: TaskEvent, at: float) -> list[Any]:
    """One event as the log keeps it, a JSON list: ``[kind, time, worker, uuid, name, queue,
    group_uuid, args, eta, priority, retry_count, headers, next, runtime, results, error,
    traceback]``.

    ``kind`` is ``S`` (succeeded), ``F`` (failed) or ``Y`` (retried); ``args`` are ``[name,
    type, value]`` each, ``eta`` a Unix time or null, ``next`` the follow-ups as ``[uuid, name,
    kind]`` (``next`` for ``on_success``, ``error`` for ``on_error``, ``chord`` for the chord
    callback), ``results`` ``[type, value]`` each (``S`` only). Each event carries the whole
    signature, so a task needs no other event (a task can fail without having run: revoked,
    unregistered...).
    """
    sig = event.signature
    nxt = [(s.uuid, s.name, "next") for s in sig.on_success]
    if sig.on_error:
        nxt += [(s.uuid, s.name, "error") for s in sig.on_error]
    if sig.chord_callback is not None:
        nxt.append((sig.chord_callback.uuid, sig.chord_callback.name, "chord"))
    return [
        kind, at, event.consumer_tag, sig.uuid, sig.name, sig.routing_key, sig.group_uuid,
        [(a.name, a.type, a.value) for a in sig.args], sig.eta.timestamp() if sig.eta is not None else None,
        sig.priority, sig.retry_count, sig.headers, nxt, event.runtime,
        [(r.type, r.value) for r in event.results] if kind == "S" else None,
        _clip(event.error) if event.error else None, _clip(event.traceback) if event.traceback else None,
    ]


class Recorder:
    """Queues lifecycle events and appends them to ``log`` from a daemon thread, one batch of
    at most :data:`~machinery_dashboard.log.BATCH_EVENTS` events per write.

    :param log: where to write.
    """

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._queue: deque[tuple[str, TaskEvent, float]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._users = 0
        self._lock = threading.Lock()
        self.dropped = 0
        self.written = 0

    # -- the hooks' side: an append, nothing else -----------------------------------------------

    def task_event(self, kind: str, event: TaskEvent) -> None:
        """Queue one lifecycle event (never blocks, never raises).

        :param kind: ``S`` (succeeded), ``F`` (failed) or ``Y`` (retried).
        """
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((kind, event, time.time()))

    def flush(self) -> int:
        """Write one batch of what is queued; returns how many events it held."""
        queue = self._queue
        batch: list[list[Any]] = []
        while queue and len(batch) < BATCH_EVENTS:
            kind, event, at = queue.popleft()
            batch.append(encode_event(kind, event, at))
        if not batch:
            return 0
        try:
            self.log.append(_encode(batch).encode("utf-8"), len(batch))
            self.log.maybe_trim(time.time())
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
                event_log = log_for(backend)
            except Exception as exc:  # noqa: BLE001 - never stop a worker
                log.warning("dashboard recorder: off (%s)", exc)
                return
            if event_log is None:
                log.info(
                    "dashboard recorder: the %s backend keeps no dashboard event log (sqlite:// and redis:// do)",
                    type(backend).__name__,
                )
                return
            rec = _by_store[key] = Recorder(event_log)
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
