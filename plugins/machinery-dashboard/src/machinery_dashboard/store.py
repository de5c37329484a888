"""The dashboard's index: one record per task, merged from the event log's batches.

A dashboard reads the batches workers append to the event log (:mod:`machinery_dashboard.log`)
and merges them into a local SQLite file (:class:`SQLiteStore`, by default under
``~/.cache/machinery-dashboard/``), which the pages query through indexes: tables
``machinery_dashboard_tasks``, ``machinery_dashboard_links`` (who sends whom next, to walk a
workflow up from any member), ``machinery_dashboard_counts`` (events per minute) and
``machinery_dashboard_meta`` (the log cursor, written in the same transaction as the records).

It is capped and expiring: a record lives ``retention`` seconds after its last change
(``MACHINERY_DASHBOARD_RETENTION``, a day by default), and only the newest ``max_tasks``
(``MACHINERY_DASHBOARD_MAX_TASKS``, 100,000) are kept, trimmed once a minute.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_MAX_TASKS",
    "DEFAULT_RETENTION",
    "Change",
    "EventStore",
    "SQLiteStore",
    "TaskRecord",
    "default_index_path",
    "settings",
]

#: Seconds a task record lives after its last change (``MACHINERY_DASHBOARD_RETENTION``).
DEFAULT_RETENTION = 24 * 3600.0
#: Task records kept at most (``MACHINERY_DASHBOARD_MAX_TASKS``); older ones are trimmed.
DEFAULT_MAX_TASKS = 100_000
#: Seconds between two trims by one writer.
TRIM_EVERY = 60.0
#: Per-minute counts are kept this long (the overview shows the last hour).
COUNTS_KEEP = 2 * 3600


@dataclass(slots=True)
class Change:
    """What one lifecycle event changes in a task's record (None: unchanged).

    :param uuid: the task.
    :param state: its new state (``RECEIVED``, ``STARTED``, ``SUCCESS``, ``FAILURE``, ``RETRY``).
    :param at: when (Unix time).
    :param retried: retries among the events merged here (the record's ``retries`` grows by it).
    :param signature: the signature as :func:`machinery_dashboard.recorder.describe_signature`
        JSON.
    :param children: UUIDs of the tasks this one sends next (chain steps, callbacks, the chord
        callback), so a workflow can be walked up from any member.
    :param history: one line per event merged here, ``"<unix time> <STATE> <worker>\\n"``.
    """

    uuid: str
    state: str
    at: float
    name: str | None = None
    queue: str | None = None
    worker: str | None = None
    group_uuid: str | None = None
    received: float | None = None
    started: float | None = None
    finished: float | None = None
    runtime: float | None = None
    retried: int = 0
    signature: str | None = None
    error: str | None = None
    traceback: str | None = None
    results: str | None = None
    children: tuple[str, ...] = ()
    history: str = ""


@dataclass(slots=True)
class TaskRecord:
    """A task as recorded (the fields of :class:`Change`, merged over its events).

    :param history: one line per event, ``"<unix time> <STATE> <worker>"``.
    """

    uuid: str
    state: str = ""
    updated: float = 0.0
    name: str = ""
    queue: str = ""
    worker: str = ""
    group_uuid: str = ""
    received: float | None = None
    started: float | None = None
    finished: float | None = None
    runtime: float | None = None
    retries: int = 0
    signature: str | None = None
    error: str = ""
    traceback: str = ""
    results: str = ""
    history: str = ""
    parent: str = ""

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready values (without the raw signature)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "signature"}


_SUMMARY = ("uuid", "state", "updated", "name", "queue", "worker", "group_uuid", "runtime", "retries", "error")
_MERGED = ("name", "queue", "worker", "group_uuid", "received", "started", "finished", "runtime", "signature",
           "error", "traceback", "results")


class EventStore(ABC):
    """Where task records are written by workers and read by the dashboard.

    :param retention: seconds a record lives after its last change.
    :param max_tasks: records kept at most.
    """

    def __init__(self, retention: float = DEFAULT_RETENTION, max_tasks: int = DEFAULT_MAX_TASKS) -> None:
        self.retention = retention
        self.max_tasks = max_tasks
        self._last_trim = 0.0

    # -- writing ------------------------------------------------------------------------------

    @abstractmethod
    def write(
        self, changes: Sequence[Change], counts: Mapping[tuple[int, str], int], cursor: str | None = None
    ) -> None:
        """Apply ``changes`` in order and add ``counts`` (``(minute, state) -> n``), and store the
        log ``cursor`` they were read up to, in one transaction."""

    @abstractmethod
    def cursor(self) -> str:
        """The log cursor stored by the last :meth:`write` (``""`` at first)."""

    @abstractmethod
    def trim(self, now: float) -> None:
        """Delete records older than :attr:`retention` and all but the newest :attr:`max_tasks`."""

    def maybe_trim(self, now: float) -> None:
        """:meth:`trim` when the last one was :data:`TRIM_EVERY` seconds ago or more."""
        if now - self._last_trim >= TRIM_EVERY:
            self._last_trim = now
            self.trim(now)

    # -- reading ------------------------------------------------------------------------------

    @abstractmethod
    def recent(
        self, limit: int = 100, *, state: str = "", name: str = "", queue: str = "", since: float = 0.0
    ) -> list[TaskRecord]:
        """The newest records (by last change) matching every filter given, newest first (the
        detail fields ``signature``, ``traceback``, ``results`` and ``history`` left empty)."""

    @abstractmethod
    def get(self, uuid: str) -> TaskRecord | None:
        """One full record, or None."""

    @abstractmethod
    def parent_of(self, uuid: str) -> str:
        """The task that sends ``uuid`` next (its chain predecessor, a chord member), or ``""``."""

    @abstractmethod
    def counts(self, since_minute: int) -> dict[int, dict[str, int]]:
        """Events per minute (Unix time // 60) and state since ``since_minute``."""

    @abstractmethod
    def changed_since(self, cursor: float, limit: int = 500) -> tuple[list[dict[str, Any]], float]:
        """``{"uuid", "state", "group_uuid", "updated"}`` of the records written after ``cursor``
        (a record's ``updated`` is the time it was last written), oldest first, and the cursor to
        pass next time."""

    @abstractmethod
    def total(self) -> int:
        """How many records are kept."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


# -- SQLite ---------------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS machinery_dashboard_tasks (
    uuid TEXT PRIMARY KEY, state TEXT NOT NULL, updated REAL NOT NULL, name TEXT, queue TEXT,
    worker TEXT, group_uuid TEXT, received REAL, started REAL, finished REAL, runtime REAL,
    retries INTEGER NOT NULL DEFAULT 0, signature TEXT, error TEXT, traceback TEXT, results TEXT,
    history TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS machinery_dashboard_tasks_updated ON machinery_dashboard_tasks (updated);
CREATE INDEX IF NOT EXISTS machinery_dashboard_tasks_state ON machinery_dashboard_tasks (state, updated);
CREATE INDEX IF NOT EXISTS machinery_dashboard_tasks_name ON machinery_dashboard_tasks (name, updated);
CREATE INDEX IF NOT EXISTS machinery_dashboard_tasks_queue ON machinery_dashboard_tasks (queue, updated);
CREATE INDEX IF NOT EXISTS machinery_dashboard_tasks_group ON machinery_dashboard_tasks (group_uuid)
    WHERE group_uuid IS NOT NULL;
CREATE TABLE IF NOT EXISTS machinery_dashboard_links (
    child TEXT PRIMARY KEY, parent TEXT NOT NULL, updated REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS machinery_dashboard_links_updated ON machinery_dashboard_links (updated);
CREATE TABLE IF NOT EXISTS machinery_dashboard_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS machinery_dashboard_counts (
    minute INTEGER NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (minute, state)
) WITHOUT ROWID;
"""

_SQLITE_UPSERT = (
    "INSERT INTO machinery_dashboard_tasks (uuid, state, updated, name, queue, worker, group_uuid, received, "
    "started, finished, runtime, retries, signature, error, traceback, results, history) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uuid) DO UPDATE SET "
    "state = excluded.state, updated = excluded.updated, retries = retries + excluded.retries, "
    "history = history || excluded.history, "
    + ", ".join(f"{c} = COALESCE(excluded.{c}, {c})" for c in _MERGED)
)


class SQLiteStore(EventStore):
    """The index in a SQLite file (WAL mode, one connection per thread).

    :param path: the database file.
    """

    def __init__(self, path: str, retention: float = DEFAULT_RETENTION, max_tasks: int = DEFAULT_MAX_TASKS) -> None:
        super().__init__(retention, max_tasks)
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        with self._conn() as conn:
            conn.executescript(_SQLITE_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def write(
        self, changes: Sequence[Change], counts: Mapping[tuple[int, str], int], cursor: str | None = None
    ) -> None:
        """Apply a batch in one transaction."""
        now = time.time()  # ``updated`` is when it was written, so a reader's cursor never skips a late batch
        rows = [
            (c.uuid, c.state, max(now, c.at), c.name, c.queue, c.worker, c.group_uuid or None, c.received, c.started,
             c.finished, c.runtime, c.retried, c.signature, c.error, c.traceback, c.results, c.history)
            for c in changes
        ]
        links = [(child, c.uuid, c.at) for c in changes for child in c.children]
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_SQLITE_UPSERT, rows)
                if links:
                    conn.executemany(
                        "INSERT OR REPLACE INTO machinery_dashboard_links (child, parent, updated) VALUES (?, ?, ?)",
                        links,
                    )
                if counts:
                    conn.executemany(
                        "INSERT INTO machinery_dashboard_counts (minute, state, n) VALUES (?, ?, ?) "
                        "ON CONFLICT (minute, state) DO UPDATE SET n = n + excluded.n",
                        [(m, s, n) for (m, s), n in counts.items()],
                    )
                if cursor is not None:
                    conn.execute("INSERT OR REPLACE INTO machinery_dashboard_meta (key, value) VALUES ('cursor', ?)",
                                 (cursor,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def cursor(self) -> str:
        """From the meta table."""
        row = self._conn().execute("SELECT value FROM machinery_dashboard_meta WHERE key = 'cursor'").fetchone()
        return str(row[0]) if row else ""

    def trim(self, now: float) -> None:
        """Delete expired records, then the oldest beyond :attr:`max_tasks`."""
        conn = self._conn()
        horizon = now - self.retention
        with self._write_lock:
            conn.execute("DELETE FROM machinery_dashboard_tasks WHERE updated < ?", (horizon,))
            conn.execute("DELETE FROM machinery_dashboard_links WHERE updated < ?", (horizon,))
            oldest = int(now // 60) - COUNTS_KEEP // 60
            conn.execute("DELETE FROM machinery_dashboard_counts WHERE minute < ?", (oldest,))
            conn.execute(
                "DELETE FROM machinery_dashboard_tasks WHERE uuid IN (SELECT uuid FROM machinery_dashboard_tasks "
                "ORDER BY updated DESC, uuid DESC LIMIT -1 OFFSET ?)",
                (self.max_tasks,),
            )

    def recent(
        self, limit: int = 100, *, state: str = "", name: str = "", queue: str = "", since: float = 0.0
    ) -> list[TaskRecord]:
        """Newest first, through the index of the first filter given."""
        where: list[str] = ["updated >= ?"]
        params: list[object] = [max(since, time.time() - self.retention)]
        for col, val in (("state", state), ("name", name), ("queue", queue)):
            if val:
                where.append(f"{col} = ?")
                params.append(val)
        sql = (
            f"SELECT {', '.join(_SUMMARY)} FROM machinery_dashboard_tasks WHERE {' AND '.join(where)} "
            "ORDER BY updated DESC LIMIT ?"
        )
        rows = self._conn().execute(sql, (*params, limit)).fetchall()
        out = []
        for r in rows:
            data: dict[str, Any] = {k: (v if v is not None or k == "runtime" else "") for k, v in zip(_SUMMARY, r)}
            out.append(TaskRecord(**data))
        return out

    def get(self, uuid: str) -> TaskRecord | None:
        """One full record, with its parent link."""
        conn = self._conn()
        cols = [*_SUMMARY, "received", "started", "finished", "signature", "traceback", "results", "history"]
        sql = f"SELECT {', '.join(cols)} FROM machinery_dashboard_tasks WHERE uuid = ?"
        row = conn.execute(sql, (uuid,)).fetchone()
        if row is None:
            return None
        data = dict(zip(cols, row))
        for k in ("name", "queue", "worker", "group_uuid", "error", "traceback", "results", "history"):
            data[k] = data[k] or ""
        return TaskRecord(**data, parent=self.parent_of(uuid))

    def parent_of(self, uuid: str) -> str:
        """From the links table."""
        row = self._conn().execute("SELECT parent FROM machinery_dashboard_links WHERE child = ?", (uuid,)).fetchone()
        return str(row[0]) if row else ""

    def counts(self, since_minute: int) -> dict[int, dict[str, int]]:
        """From the per-minute table."""
        out: dict[int, dict[str, int]] = {}
        for minute, state, n in self._conn().execute(
            "SELECT minute, state, n FROM machinery_dashboard_counts WHERE minute >= ?", (since_minute,)
        ):
            out.setdefault(int(minute), {})[str(state)] = int(n)
        return out

    def changed_since(self, cursor: float, limit: int = 500) -> tuple[list[dict[str, Any]], float]:
        """Through the ``updated`` index."""
        rows = self._conn().execute(
            "SELECT uuid, state, group_uuid, updated FROM machinery_dashboard_tasks WHERE updated > ? "
            "ORDER BY updated LIMIT ?",
            (cursor, limit),
        ).fetchall()
        if not rows:
            return [], cursor
        return [{"uuid": u, "state": s, "group_uuid": g or "", "updated": t} for u, s, g, t in rows], float(rows[-1][3])

    def total(self) -> int:
        """COUNT(*)."""
        return int(self._conn().execute("SELECT COUNT(*) FROM machinery_dashboard_tasks").fetchone()[0])

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def default_index_path(backend_url: str) -> str:
    """Where a dashboard keeps its index by default: ``$XDG_CACHE_HOME/machinery-dashboard/``
    (``~/.cache/...``), one file per result backend URL (named by a hash of it)."""
    import hashlib

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    name = hashlib.sha256(backend_url.encode("utf-8")).hexdigest()[:16]
    return os.path.join(base, "machinery-dashboard", f"{name}.db")


def settings() -> tuple[float, int]:
    """Retention and cap from ``MACHINERY_DASHBOARD_RETENTION`` (seconds, default a day) and
    ``MACHINERY_DASHBOARD_MAX_TASKS`` (default 100,000)."""
    retention = float(os.environ.get("MACHINERY_DASHBOARD_RETENTION", "") or DEFAULT_RETENTION)
    max_tasks = int(os.environ.get("MACHINERY_DASHBOARD_MAX_TASKS", "") or DEFAULT_MAX_TASKS)
    if retention <= 0 or max_tasks <= 0:
        raise ValueError("MACHINERY_DASHBOARD_RETENTION and MACHINERY_DASHBOARD_MAX_TASKS must be > 0")
    return retention, max_tasks
