"""The dashboard side of the event log: batches merged into the index.

An :class:`Ingester` thread reads the batches after the index's cursor, merges their events into
one :class:`~machinery_dashboard.store.Change` per task and batch (:func:`merge`) and writes
them with the new cursor in one transaction, so a restarted dashboard goes on where it stopped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from typing import Any

from machinery_dashboard.log import EventLog
from machinery_dashboard.store import Change, EventStore

__all__ = ["Ingester", "merge"]

log = logging.getLogger("machinery.dashboard")

_STATES = {"S": "SUCCESS", "F": "FAILURE", "Y": "RETRY"}
_encode = json.JSONEncoder(separators=(",", ":"), default=repr).encode


def merge(events: list[list[Any]]) -> tuple[list[Change], Counter[tuple[int, str]]]:
    """One change per task from decoded events (in order; see
    :func:`~machinery_dashboard.recorder.encode_event`), and the events per minute and state.
    Malformed events are skipped."""
    changes: dict[str, Change] = {}
    counts: Counter[tuple[int, str]] = Counter()
    for ev in events:
        try:
            kind, at, worker, uuid = ev[0], float(ev[1]), str(ev[2]), str(ev[3])
            state = _STATES[kind]
            (name, queue, group, args, eta, priority, retry_count, headers, nxt, runtime, results, error,
             traceback) = ev[4:17]
            children = tuple(str(n[0]) for n in nxt if n and n[0])
        except (IndexError, KeyError, TypeError, ValueError):
            continue
        c = changes.get(uuid)
        if c is None:
            c = changes[uuid] = Change(uuid, state, at)
        c.state, c.at = state, at
        if worker:
            c.worker = worker
        c.history += f"{at:.3f} {state} {worker}\n"
        counts[(int(at // 60), state)] += 1
        c.name, c.queue, c.group_uuid, c.children = name, queue or None, group or None, children
        c.signature = _encode(
            {"args": args, "eta": eta, "priority": priority, "retry_count": retry_count, "headers": headers,
             "next": nxt}
        )
        if runtime:
            c.runtime, c.started = runtime, at - runtime
        if kind == "S":
            c.finished = at
            c.results = _encode(results)
        elif kind == "F":
            c.finished = at
            c.error, c.traceback = error or "", traceback
        else:
            c.retried += 1
            c.error, c.traceback = error or "", traceback
    return list(changes.values()), counts


class Ingester:
    """Reads ``log`` into ``index`` from a daemon thread.

    :param log: the backend's event log.
    :param index: the dashboard's index.
    :param interval: seconds between two reads when nothing was new.
    """

    def __init__(self, log: EventLog, index: EventStore, interval: float = 0.25) -> None:
        self.log = log
        self.index = index
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ingested = 0
        self.missed = False

    def step(self) -> int:
        """Read and merge one round of batches; returns how many events were merged."""
        cursor = self.index.cursor()
        if cursor and self.log.behind(cursor):
            self.missed = True
            log.warning("dashboard: the event log was trimmed past what was read; some events were missed")
            cursor = ""
        batches = self.log.read(cursor, 100)
        if not batches:
            return 0
        events: list[list[Any]] = []
        for _, data in batches:
            try:
                decoded = json.loads(data)
            except ValueError:
                continue
            if isinstance(decoded, list):
                events.extend(e for e in decoded if isinstance(e, list))
        changes, counts = merge(events)
        self.index.write(changes, counts, cursor=batches[-1][0])
        self.index.maybe_trim(time.time())
        self.ingested += len(events)
        return len(events) or 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception:
                log.warning("dashboard: reading the event log failed", exc_info=True)
                busy = 0
            if not busy:
                self._stop.wait(self.interval)

    def start(self) -> None:
        """Start the thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="machinery-dashboard-ingest", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
