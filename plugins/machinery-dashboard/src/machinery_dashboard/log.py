"""The event log in the result backend's store: what workers write, what dashboards read.

A worker's recorder appends one *batch* (a JSON list of events, see
:func:`machinery_dashboard.recorder.encode_event`) per flush: one write per quarter second
whatever the task rate, so the log costs the workers and the store almost nothing per task. A
dashboard reads the batches after its cursor and merges them into its own index
(:mod:`machinery_dashboard.store`), which serves the pages.

* :class:`SQLiteLog` for ``sqlite://`` backends: table ``machinery_dashboard_log`` in the
  backend's own file; trimmed to ``max_events`` events and ``retention`` seconds.
* :class:`RedisLog` for ``redis://`` backends: the stream ``machinery:dashboard:{d}:log`` (out of
  Go Machinery's namespaces); trimmed to ``retention`` seconds and, since a stream counts entries
  and not the events in them, to ``max_events // 500`` batches (a batch holds at most 500
  events), which bounds its memory.

Other backends have no log (:func:`log_for` returns None).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from machinery.plugin import Backend

__all__ = [
    "BATCH_EVENTS",
    "DEFAULT_LOG_MAX_EVENTS",
    "DEFAULT_LOG_RETENTION",
    "EventLog",
    "RedisLog",
    "SQLiteLog",
    "log_for",
]

#: Seconds a batch stays in the log (``MACHINERY_DASHBOARD_LOG_RETENTION``): how far back a
#: dashboard started later can catch up. A running dashboard keeps what it read in its index.
DEFAULT_LOG_RETENTION = 3600.0
#: Events kept at most (``MACHINERY_DASHBOARD_LOG_MAX_EVENTS``).
DEFAULT_LOG_MAX_EVENTS = 1_000_000
#: Events per batch at most.
BATCH_EVENTS = 500
#: Seconds between two trims by one writer.
TRIM_EVERY = 60.0


class EventLog(ABC):
    """An append-only, capped, expiring log of event batches.

    :param retention: seconds a batch is kept.
    :param max_events: events kept at most.
    """

    def __init__(self, retention: float = DEFAULT_LOG_RETENTION, max_events: int = DEFAULT_LOG_MAX_EVENTS) -> None:
        self.retention = retention
        self.max_events = max_events
        self._last_trim = 0.0

    @abstractmethod
    def append(self, data: bytes, n: int) -> None:
        """Add one batch of ``n`` events (``data``: its JSON)."""

    @abstractmethod
    def read(self, cursor: str, limit: int = 100) -> list[tuple[str, bytes]]:
        """The batches after ``cursor`` (``""``: from the oldest kept), oldest first, as
        ``(id, data)``; pass the last id as the next cursor."""

    @abstractmethod
    def trim(self, now: float) -> None:
        """Drop batches older than :attr:`retention` and beyond :attr:`max_events`."""

    def maybe_trim(self, now: float) -> None:
        """:meth:`trim` when the last one was :data:`TRIM_EVERY` seconds ago or more."""
        if now - self._last_trim >= TRIM_EVERY:
            self._last_trim = now
            self.trim(now)

    def behind(self, cursor: str) -> bool:
        """True when ``cursor`` is older than the oldest batch kept (batches were trimmed
        before being read, or the store was emptied)."""
        return False

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


class SQLiteLog(EventLog):
    """The log as a table of the ``sqlite://`` backend's file (WAL mode; one connection per
    thread and process).

    :param path: the database file.
    """

    def __init__(self, path: str, retention: float = DEFAULT_LOG_RETENTION,
                 max_events: int = DEFAULT_LOG_MAX_EVENTS) -> None:
        super().__init__(retention, max_events)
        self.path = path
        self._local = threading.local()
        self._conn().execute(
            "CREATE TABLE IF NOT EXISTS machinery_dashboard_log (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "at REAL NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL)"
        )

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def append(self, data: bytes, n: int) -> None:
        """One INSERT."""
        sql = "INSERT INTO machinery_dashboard_log (at, n, data) VALUES (?, ?, ?)"
        self._conn().execute(sql, (time.time(), n, data))

    def read(self, cursor: str, limit: int = 100) -> list[tuple[str, bytes]]:
        """By row id."""
        rows = self._conn().execute(
            "SELECT id, data FROM machinery_dashboard_log WHERE id > ? ORDER BY id LIMIT ?", (int(cursor or 0), limit)
        ).fetchall()
        return [(str(i), bytes(d)) for i, d in rows]

    def trim(self, now: float) -> None:
        """By age, then by the running sum of events, newest first."""
        conn = self._conn()
        conn.execute("DELETE FROM machinery_dashboard_log WHERE at < ?", (now - self.retention,))
        row = conn.execute(
            "SELECT id FROM (SELECT id, SUM(n) OVER (ORDER BY id DESC) AS kept FROM machinery_dashboard_log) "
            "WHERE kept > ? ORDER BY id DESC LIMIT 1",
            (self.max_events,),
        ).fetchone()
        if row is not None:
            conn.execute("DELETE FROM machinery_dashboard_log WHERE id <= ?", (row[0],))

    def behind(self, cursor: str) -> bool:
        """The oldest id kept is past ``cursor + 1``, or the newest is before it (a new file)."""
        lo, hi = self._conn().execute("SELECT MIN(id), MAX(id) FROM machinery_dashboard_log").fetchone()
        c = int(cursor or 0)
        return lo is not None and (lo > c + 1 or hi < c)

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


#: The stream's key (the ``{d}`` hash tag keeps the dashboard's keys in one cluster slot).
REDIS_LOG_KEY = "machinery:dashboard:{d}:log"


class RedisLog(EventLog):
    """The log as a Redis stream (one entry per batch: fields ``n`` and ``d``).

    :param client: a redis-py client (the ``redis://`` backend's own).
    """

    def __init__(self, client: Any, retention: float = DEFAULT_LOG_RETENTION,
                 max_events: int = DEFAULT_LOG_MAX_EVENTS) -> None:
        super().__init__(retention, max_events)
        self.client = client

    @property
    def max_batches(self) -> int:
        """Entries kept at most: ``max_events // BATCH_EVENTS`` (at least 100)."""
        return max(100, self.max_events // BATCH_EVENTS)

    def append(self, data: bytes, n: int) -> None:
        """One XADD, trimming approximately to :attr:`max_batches`."""
        self.client.xadd(REDIS_LOG_KEY, {"n": n, "d": data}, maxlen=self.max_batches, approximate=True)

    def read(self, cursor: str, limit: int = 100) -> list[tuple[str, bytes]]:
        """XRANGE after the cursor."""
        start = f"({cursor}" if cursor else "-"
        out = []
        for entry_id, fields in self.client.xrange(REDIS_LOG_KEY, min=start, max="+", count=limit):
            eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            out.append((eid, fields.get(b"d", fields.get("d", b""))))
        return out

    def trim(self, now: float) -> None:
        """XTRIM by age (stream ids are millisecond times)."""
        self.client.xtrim(REDIS_LOG_KEY, minid=f"{int((now - self.retention) * 1000)}-0", approximate=True)

    def behind(self, cursor: str) -> bool:
        """The first entry kept is after ``cursor``."""
        if not cursor:
            return False
        first = self.client.xrange(REDIS_LOG_KEY, count=1)
        if not first:
            return False
        fid = first[0][0].decode() if isinstance(first[0][0], bytes) else str(first[0][0])

        def key(x: str) -> tuple[int, int]:
            ms, _, seq = x.partition("-")
            return int(ms), int(seq or 0)

        return key(fid) > key(cursor)


def _settings() -> tuple[float, int]:
    retention = float(os.environ.get("MACHINERY_DASHBOARD_LOG_RETENTION", "") or DEFAULT_LOG_RETENTION)
    max_events = int(os.environ.get("MACHINERY_DASHBOARD_LOG_MAX_EVENTS", "") or DEFAULT_LOG_MAX_EVENTS)
    if retention <= 0 or max_events <= 0:
        raise ValueError("MACHINERY_DASHBOARD_LOG_RETENTION and MACHINERY_DASHBOARD_LOG_MAX_EVENTS must be > 0")
    return retention, max_events


def log_for(backend: Backend) -> EventLog | None:
    """The event log kept in ``backend``'s store, or None where there is none (only
    ``sqlite://`` and ``redis://`` backends have one)."""
    retention, max_events = _settings()
    if type(backend).__module__ == "machinery.builtin.sqlite.backend":  # the embedded sqlite:// backend
        return SQLiteLog(backend.path, retention, max_events)  # type: ignore[attr-defined]
    if type(backend).__module__.startswith("machinery_redis."):
        return RedisLog(backend.client, retention, max_events)  # type: ignore[attr-defined]
    return None
