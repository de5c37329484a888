"""The dashboard's event log: one record per task, kept next to the result backend's data.

Workers with the plugin installed write :class:`Change` batches (see
:mod:`machinery_dashboard.recorder`); the dashboard reads them. Two stores exist:

* :class:`SQLiteStore` for ``sqlite://`` backends: tables ``machinery_dashboard_tasks``,
  ``machinery_dashboard_links`` and ``machinery_dashboard_counts`` in the backend's own file;
* :class:`RedisStore` for ``redis://`` backends: keys under ``machinery:dashboard:{d}:`` (one
  hash slot, so it works on Redis Cluster too), out of Go Machinery's namespaces.

Both are capped and expiring: a record lives ``retention`` seconds after its last change, and
only the newest ``max_tasks`` records are kept (trimmed at most once a minute per writer).
Other backends get no store (:func:`store_for` returns None): the dashboard then shows what the
backend itself holds (states by UUID, group metadata, workers) but no list of recent tasks.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from machinery.interfaces import Backend

__all__ = [
    "DEFAULT_MAX_TASKS",
    "DEFAULT_RETENTION",
    "Change",
    "EventStore",
    "RedisStore",
    "SQLiteStore",
    "TaskRecord",
    "store_for",
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
    :param retried: 1 when this is a retry (the record's ``retries`` grows by it).
    :param children: UUIDs of the tasks this one sends next (chain steps, callbacks, the chord
        callback), so a workflow can be walked up from any member.
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
    signature: bytes | None = None
    error: str | None = None
    traceback: str | None = None
    results: str | None = None
    children: tuple[str, ...] = ()


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
    signature: bytes | None = None
    error: str = ""
    traceback: str = ""
    results: str = ""
    history: str = ""
    parent: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready values (without the raw signature)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("signature", "extra")}


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
    def write(self, changes: Sequence[Change], counts: Mapping[tuple[int, str], int]) -> None:
        """Apply ``changes`` in order and add ``counts`` (``(minute, state) -> n``), in one
        transaction or round trip."""

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

    def get_many(self, uuids: Iterable[str]) -> dict[str, TaskRecord]:
        """Several full records by UUID (the missing ones left out)."""
        out = {}
        for u in uuids:
            rec = self.get(u)
            if rec is not None:
                out[u] = rec
        return out

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
    retries INTEGER NOT NULL DEFAULT 0, signature BLOB, error TEXT, traceback TEXT, results TEXT,
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
    """The event log in a SQLite file (the ``sqlite://`` backend's), WAL mode, one connection per
    thread.

    :param path: the database file.
    """

    def __init__(self, path: str, retention: float = DEFAULT_RETENTION, max_tasks: int = DEFAULT_MAX_TASKS) -> None:
        super().__init__(retention, max_tasks)
        self.path = path
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

    def write(self, changes: Sequence[Change], counts: Mapping[tuple[int, str], int]) -> None:
        """Apply a batch in one transaction."""
        now = time.time()  # ``updated`` is when it was written, so a reader's cursor never skips a late batch
        rows = [
            (c.uuid, c.state, max(now, c.at), c.name, c.queue, c.worker, c.group_uuid or None, c.received, c.started,
             c.finished, c.runtime, c.retried, c.signature, c.error, c.traceback, c.results,
             f"{c.at:.3f} {c.state} {c.worker or ''}\n")
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
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def trim(self, now: float) -> None:
        """Delete expired records, then the oldest beyond :attr:`max_tasks`."""
        conn = self._conn()
        horizon = now - self.retention
        with self._write_lock:
            conn.execute("DELETE FROM machinery_dashboard_tasks WHERE updated < ?", (horizon,))
            conn.execute("DELETE FROM machinery_dashboard_links WHERE updated < ?", (horizon,))
            oldest = int(now // 60) - COUNTS_KEEP // 60
            conn.execute("DELETE FROM machinery_dashboard_counts WHERE minute < ?", (oldest,))
            row = conn.execute(
                "SELECT updated FROM machinery_dashboard_tasks ORDER BY updated DESC LIMIT 1 OFFSET ?",
                (self.max_tasks,),
            ).fetchone()
            if row is not None:
                conn.execute("DELETE FROM machinery_dashboard_tasks WHERE updated <= ?", (row[0],))

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


# -- Redis ----------------------------------------------------------------------------------------

_PREFIX = "machinery:dashboard:{d}:"
#: Redis filters look at this many of the newest records at most.
REDIS_SCAN_LIMIT = 5000


#: Matches records by state, name and queue on the server (keys share the ``{d}`` hash slot).
_FILTER_LUA = """
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[7]))
local out, limit = {}, tonumber(ARGV[6])
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', ARGV[1] .. 't:' .. id, 'state', 'name', 'queue')
  if v[1] and (ARGV[3] == '' or v[1] == ARGV[3]) and (ARGV[4] == '' or v[2] == ARGV[4])
      and (ARGV[5] == '' or v[3] == ARGV[5]) then
    out[#out + 1] = id
    if #out >= limit then break end
  end
end
return out
"""


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else ("" if v is None else str(v))


def _f(v: Any) -> float | None:
    return None if v in (None, b"", "") else float(v)


class RedisStore(EventStore):
    """The event log in Redis: a hash per task (``t:<uuid>``) and its history (``h:<uuid>``),
    a sorted set of UUIDs by last change (``recent``), parent links (``p:<child>``) and
    per-minute counts (``m:<minute>``), all expiring.

    :param client: a redis-py client (the ``redis://`` backend's own).
    """

    def __init__(self, client: Any, retention: float = DEFAULT_RETENTION, max_tasks: int = DEFAULT_MAX_TASKS) -> None:
        super().__init__(retention, max_tasks)
        self.client = client
        self._filter: Any = None

    def write(self, changes: Sequence[Change], counts: Mapping[tuple[int, str], int]) -> None:
        """One pipeline (not a transaction) for the batch."""
        ex = max(1, int(self.retention))
        pipe = self.client.pipeline(transaction=False)
        recent: dict[str, float] = {}
        now = time.time()  # ``updated`` is when it was written, so a reader's cursor never skips a late batch
        for c in changes:
            key = _PREFIX + "t:" + c.uuid
            mapping: dict[str, Any] = {"state": c.state, "updated": max(now, c.at)}
            for name in _MERGED:
                v = getattr(c, name)
                if v is not None and v != "":
                    mapping[name] = v
            pipe.hset(key, mapping=mapping)
            if c.retried:
                pipe.hincrby(key, "retries", c.retried)
            pipe.expire(key, ex)
            hkey = _PREFIX + "h:" + c.uuid
            pipe.append(hkey, f"{c.at:.3f} {c.state} {c.worker or ''}\n")
            pipe.expire(hkey, ex)
            for child in c.children:
                pipe.set(_PREFIX + "p:" + child, c.uuid, ex=ex)
            recent[c.uuid] = max(now, c.at)
        if recent:
            pipe.zadd(_PREFIX + "recent", recent)
        for (minute, state), n in counts.items():
            mkey = f"{_PREFIX}m:{minute}"
            pipe.hincrby(mkey, state, n)
            pipe.expire(mkey, COUNTS_KEEP)
        pipe.execute()

    def trim(self, now: float) -> None:
        """Drop expired and surplus UUIDs from ``recent`` (their hashes expire by themselves,
        or are deleted here when trimmed for the cap)."""
        key = _PREFIX + "recent"
        surplus = list(self.client.zrangebyscore(key, "-inf", f"({now - self.retention!r}"))
        surplus += self.client.zrange(key, len(surplus), -(self.max_tasks + 1))
        if surplus:
            pipe = self.client.pipeline(transaction=False)
            for u in surplus:
                pipe.delete(_PREFIX + "t:" + _s(u), _PREFIX + "h:" + _s(u))
            pipe.zrem(key, *surplus)
            pipe.execute()

    def _hashes(self, uuids: Sequence[str], cols: Sequence[str]) -> list[dict[str, Any] | None]:
        pipe = self.client.pipeline(transaction=False)
        for u in uuids:
            pipe.hmget(_PREFIX + "t:" + u, list(cols))
        out: list[dict[str, Any] | None] = []
        for vals in pipe.execute():
            out.append(None if vals[0] is None else dict(zip(cols, vals)))
        return out

    @staticmethod
    def _record(uuid: str, d: Mapping[str, Any]) -> TaskRecord:
        rec = TaskRecord(uuid=uuid)
        for k, v in d.items():
            if k == "uuid":
                continue
            if k in ("updated",):
                rec.updated = _f(v) or 0.0
            elif k in ("received", "started", "finished", "runtime"):
                setattr(rec, k, _f(v))
            elif k == "retries":
                rec.retries = int(v or 0)
            elif k == "signature":
                rec.signature = v if v else None
            else:
                setattr(rec, k, _s(v))
        return rec

    def recent(
        self, limit: int = 100, *, state: str = "", name: str = "", queue: str = "", since: float = 0.0
    ) -> list[TaskRecord]:
        """Newest first; with filters, among the newest :data:`REDIS_SCAN_LIMIT` records (matched
        by a Lua script on the server, then read in one pipeline)."""
        key = _PREFIX + "recent"
        cols = [c for c in _SUMMARY if c != "uuid"]
        lo = max(since, time.time() - self.retention)
        if state or name or queue:
            if self._filter is None:
                self._filter = self.client.register_script(_FILTER_LUA)
            found = [_s(u) for u in self._filter(keys=[key], args=[_PREFIX, lo, state, name, queue, limit,
                                                                    REDIS_SCAN_LIMIT])]
            return [self._record(u, d) for u, d in zip(found, self._hashes(found, cols)) if d is not None]
        out: list[TaskRecord] = []
        start, chunk = 0, max(limit, 200)
        while len(out) < limit and start < REDIS_SCAN_LIMIT:
            uuids = [_s(u) for u in self.client.zrevrangebyscore(key, "+inf", lo, start=start, num=chunk)]
            if not uuids:
                break
            for u, d in zip(uuids, self._hashes(uuids, cols)):
                if d is None:
                    continue
                rec = self._record(u, d)
                if (state and rec.state != state) or (name and rec.name != name) or (queue and rec.queue != queue):
                    continue
                out.append(rec)
                if len(out) >= limit:
                    break
            start += chunk
        return out

    def get(self, uuid: str) -> TaskRecord | None:
        """HGETALL plus history and parent."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(_PREFIX + "t:" + uuid)
        pipe.get(_PREFIX + "h:" + uuid)
        pipe.get(_PREFIX + "p:" + uuid)
        data, history, parent = pipe.execute()
        if not data:
            return None
        rec = self._record(uuid, {_s(k): v for k, v in data.items()})
        rec.history, rec.parent = _s(history), _s(parent)
        return rec

    def parent_of(self, uuid: str) -> str:
        """GET ``p:<uuid>``."""
        return _s(self.client.get(_PREFIX + "p:" + uuid))

    def counts(self, since_minute: int) -> dict[int, dict[str, int]]:
        """One HGETALL per minute, pipelined."""
        now_minute = int(time.time() // 60)
        minutes = list(range(since_minute, now_minute + 1))
        pipe = self.client.pipeline(transaction=False)
        for m in minutes:
            pipe.hgetall(f"{_PREFIX}m:{m}")
        out: dict[int, dict[str, int]] = {}
        for m, data in zip(minutes, pipe.execute()):
            if data:
                out[m] = {_s(k): int(v) for k, v in data.items()}
        return out

    def changed_since(self, cursor: float, limit: int = 500) -> tuple[list[dict[str, Any]], float]:
        """From the ``recent`` sorted set."""
        found = self.client.zrangebyscore(_PREFIX + "recent", f"({cursor!r}", "+inf", start=0, num=limit,
                                          withscores=True)
        if not found:
            return [], cursor
        uuids = [_s(u) for u, _ in found]
        out = []
        for (u, score), d in zip(found, self._hashes(uuids, ["state", "group_uuid"])):
            if d is not None:
                out.append(
                    {"uuid": _s(u), "state": _s(d["state"]), "group_uuid": _s(d["group_uuid"]), "updated": score}
                )
        return out, float(found[-1][1])

    def total(self) -> int:
        """ZCARD of ``recent``."""
        return int(self.client.zcard(_PREFIX + "recent"))


# -- choosing a store -----------------------------------------------------------------------------


def _settings() -> tuple[float, int]:
    retention = float(os.environ.get("MACHINERY_DASHBOARD_RETENTION", "") or DEFAULT_RETENTION)
    max_tasks = int(os.environ.get("MACHINERY_DASHBOARD_MAX_TASKS", "") or DEFAULT_MAX_TASKS)
    if retention <= 0 or max_tasks <= 0:
        raise ValueError("MACHINERY_DASHBOARD_RETENTION and MACHINERY_DASHBOARD_MAX_TASKS must be > 0")
    return retention, max_tasks


def store_for(backend: Backend) -> EventStore | None:
    """The event store living next to ``backend``'s data, or None when the backend is not one
    the dashboard can write to (only ``sqlite://`` and ``redis://`` are).

    Retention and cap come from ``MACHINERY_DASHBOARD_RETENTION`` (seconds, default a day) and
    ``MACHINERY_DASHBOARD_MAX_TASKS`` (default 100,000).
    """
    retention, max_tasks = _settings()
    from machinery.default.backend import SQLiteBackend

    if isinstance(backend, SQLiteBackend):
        return SQLiteStore(backend.path, retention, max_tasks)
    if type(backend).__module__.startswith("machinery_redis."):
        return RedisStore(backend.client, retention, max_tasks)  # type: ignore[attr-defined]
    return None
