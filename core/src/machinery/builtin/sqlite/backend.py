"""The embedded result backend: task states and group metadata in a SQLite file.

States are stored as Go Machinery's ``TaskState`` JSON (:func:`encode_task_state`), so
``machinery status`` shows the same record whatever the backend. Records expire after
``results_expire_in`` seconds (expired rows are invisible at once and deleted by a sweep at
most once a minute). The chord trigger is one ``UPDATE ... WHERE chord_triggered = 0``: exactly
one caller, in any thread or process, sees it change a row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.backend_ops import Completion
from machinery.builtin.sqlite import ENV_OPTIONS
from machinery.builtin.sqlite._db import rows_by_chunks
from machinery.builtin.sqlite._errors import SQLiteBackendError
from machinery.builtin.sqlite.transport import SQLiteRole, SQLiteTransport
from machinery.errors import DecodeError
from machinery.interfaces import Backend
from machinery.signature import decode_group_meta, decode_task_state, encode_group_meta, encode_task_state

if TYPE_CHECKING:
    from datetime import timedelta

    from machinery.config import Config
    from machinery.revoke import Revocation
    from machinery.state import GroupMeta, TaskState

__all__ = ["SQLiteBackend", "SQLiteBackendError"]

log = logging.getLogger("machinery.sqlite")

_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_WORKERS_TABLE = (
    "CREATE TABLE IF NOT EXISTS machinery_workers (id TEXT PRIMARY KEY, data BLOB NOT NULL, expires_at REAL NOT NULL)"
)
_REVOKED_TABLE = (
    "CREATE TABLE IF NOT EXISTS machinery_revoked (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "uuid TEXT NOT NULL UNIQUE, terminate INTEGER NOT NULL, expires_at REAL)"
)
_RATES_TABLE = "CREATE TABLE IF NOT EXISTS machinery_rate_limits (key TEXT PRIMARY KEY, tat REAL NOT NULL)"
_UPSERT_STATE = (
    "INSERT INTO machinery_states (uuid, data, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (uuid) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at"
)

_DELETE_STATE = "DELETE FROM machinery_states WHERE uuid = ?"
_STATES = frozenset({"machinery_states"})
_GROUPS = frozenset({"machinery_groups"})


class SQLiteBackend(SQLiteRole, Backend):
    """Result backend on a SQLite file (same URLs and ``sqlite:`` options as the broker).

    :param url: the ``sqlite://`` URL.
    :param config: the core configuration (``results_expire_in`` sets the expiry).
    :param transport: the transport handing it out (None: the shared one of ``url`` and ``config``).
    :raises ConfigError: a malformed URL or option.
    """

    supports_expiry: ClassVar[bool] = True
    persistent: ClassVar[bool] = True
    supports_worker_registry: ClassVar[bool] = True
    supports_revocation: ClassVar[bool] = True
    supports_rate_limit: ClassVar[bool] = True
    config_section: ClassVar[str | None] = "sqlite"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS
    error_class = SQLiteBackendError

    def __init__(self, url: str, config: Config, *, transport: SQLiteTransport | None = None) -> None:
        super().__init__(url, config)
        self._attach(url, config, transport)
        self._workers_ready = False
        self._revoked_ready = False
        self._rates_ready = False

    def _expires_at(self, now: float) -> float | None:
        secs = self.lifetime()
        return now + secs if secs is not None else None

    def _decode_state(self, uuid: str, data: bytes) -> TaskState:
        try:
            return decode_task_state(data)
        except DecodeError as exc:
            reason = f"stored state of {uuid} is not valid: {exc.reason}"
            raise SQLiteBackendError(self.path, "corrupt", reason, "load") from exc

    def _sweep(self) -> None:
        # Delete a bounded batch of expired rows, at most once a minute per process. Best
        # effort: expired rows are invisible anyway, and the state just stored must not be
        # reported as failed (and its task redelivered) because the clean-up after it failed.
        if not self._db.should_sweep():
            return
        now = time.time()
        try:
            with self._guard("expire"), self._db.write() as conn:
                for table in ("machinery_states", "machinery_groups"):
                    conn.execute(
                        f"DELETE FROM {table} WHERE uuid IN "
                        f"(SELECT uuid FROM {table} WHERE expires_at <= ? LIMIT 5000)",
                        (now,),
                    )
        except SQLiteBackendError as exc:
            log.warning("%s; expired records are deleted at the next sweep", exc)

    # -- primitives -----------------------------------------------------------------------------

    def _store_state(self, state: TaskState) -> None:
        """Write (replace) the state as Go JSON, with its expiry, in the next group commit."""
        row = (state.task_uuid, encode_task_state(state), self._expires_at(time.time()))
        self._db.submit(_UPSERT_STATE, [row], self, "store state", tables=_STATES, key=0)
        self._sweep()

    def _store_states(self, states: Sequence[TaskState], *, wait: bool = True) -> Completion:
        """Write several states in the next group commit (``wait=False``: a pending completion
        while another thread commits, resolved on that thread)."""
        if not states:
            return Completion.stored()
        expires = self._expires_at(time.time())
        rows = [(st.task_uuid, encode_task_state(st), expires) for st in states]
        return self._db.submit(_UPSERT_STATE, rows, self, "store states", tables=_STATES, key=0, wait=wait)

    def _load_state(self, task_uuid: str) -> TaskState | None:
        """Read a live (unexpired) state."""
        with self._guard("load state"), self._db.read() as conn:
            row = conn.execute(
                f"SELECT data FROM machinery_states WHERE uuid = ? AND {_LIVE}", (task_uuid, time.time())
            ).fetchone()
        return None if row is None else self._decode_state(task_uuid, row[0])

    def _load_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """Read several states with one query per 500 UUIDs."""
        found: dict[str, bytes] = {}
        now = time.time()
        with self._guard("load states"), self._db.read() as conn:
            for chunk in rows_by_chunks(list(dict.fromkeys(task_uuids))):
                marks = ",".join("?" * len(chunk))
                found.update(
                    conn.execute(
                        f"SELECT uuid, data FROM machinery_states WHERE uuid IN ({marks}) AND {_LIVE}", (*chunk, now)
                    ).fetchall()
                )
        return [None if u not in found else self._decode_state(u, found[u]) for u in task_uuids]

    def _store_group(self, meta: GroupMeta) -> None:
        """Write the group's metadata (Go JSON) and its chord flag."""
        with self._guard("store group"), self._db.write(begin=False) as conn:
            conn.execute(
                "INSERT INTO machinery_groups (uuid, data, chord_triggered, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (uuid) DO UPDATE SET data = excluded.data, "
                "chord_triggered = excluded.chord_triggered, expires_at = excluded.expires_at",
                (meta.group_uuid, encode_group_meta(meta), int(meta.chord_triggered), self._expires_at(time.time())),
            )

    def _load_group(self, group_uuid: str) -> GroupMeta | None:
        """Read live group metadata; ``chord_triggered`` comes from its own column."""
        with self._guard("load group"), self._db.read() as conn:
            row = conn.execute(
                f"SELECT data, chord_triggered FROM machinery_groups WHERE uuid = ? AND {_LIVE}",
                (group_uuid, time.time()),
            ).fetchone()
        if row is None:
            return None
        try:
            meta = decode_group_meta(row[0])
        except DecodeError as exc:
            raise SQLiteBackendError(
                self.path, "corrupt", f"stored group {group_uuid} is not valid: {exc.reason}", "load"
            ) from exc
        meta.chord_triggered = bool(row[1])
        return meta

    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        """One conditional UPDATE: True only for the caller that changed the row."""
        with self._guard("trigger chord"), self._db.write(begin=False) as conn:
            cur = conn.execute(
                f"UPDATE machinery_groups SET chord_triggered = 1 WHERE uuid = ? AND chord_triggered = 0 AND {_LIVE}",
                (group_uuid, time.time()),
            )
            return cur.rowcount == 1

    def _delete(self, uuid: str) -> None:
        """Delete a state or group record (absent is fine)."""
        # In the group commit, after any state of it still waiting there.
        db = self._db
        states = db.submit(_DELETE_STATE, [(uuid,)], self, "delete", tables=_STATES, wait=False)
        db.submit("DELETE FROM machinery_groups WHERE uuid = ?", [(uuid,)], self, "delete", tables=_GROUPS)
        states.result()

    # -- worker registry --------------------------------------------------------------------------

    def _workers_table(self, conn: Any) -> None:
        # Its own table, created on first use (not part of the versioned schema: a database
        # written by an older machinery simply gains it, and Go never opens these files).
        if not self._workers_ready:
            conn.execute(_WORKERS_TABLE)
            self._workers_ready = True

    def register_worker(self, worker_id: str, record: bytes, ttl: timedelta) -> None:
        """Upsert the worker's row with ``expires_at = now + ttl``."""
        with self._guard("register worker"), self._db.write(begin=False) as conn:
            self._workers_table(conn)
            conn.execute(
                "INSERT INTO machinery_workers (id, data, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at",
                (worker_id, bytes(record), time.time() + ttl.total_seconds()),
            )

    def unregister_worker(self, worker_id: str) -> None:
        """Delete the worker's row (and any expired rows)."""
        with self._guard("unregister worker"), self._db.write(begin=False) as conn:
            self._workers_table(conn)
            conn.execute("DELETE FROM machinery_workers WHERE id = ? OR expires_at <= ?", (worker_id, time.time()))

    def list_workers(self) -> list[bytes]:
        """The rows whose ``expires_at`` is in the future."""
        with self._guard("list workers"), self._db.write(begin=False) as conn:
            self._workers_table(conn)
            rows = conn.execute("SELECT data FROM machinery_workers WHERE expires_at > ?", (time.time(),)).fetchall()
        return [bytes(r[0]) for r in rows]

    # -- revocations and rate limits (own tables, created on first use like the registry's) -------

    def _revoked_table(self) -> None:
        if not self._revoked_ready:
            with self._guard("create revocations table"), self._db.write(begin=False) as conn:
                conn.execute(_REVOKED_TABLE)
            self._revoked_ready = True

    def revoke(self, task_uuids: Sequence[str], *, terminate: bool, ttl: timedelta | None) -> None:
        """One transaction: drop expired rows, then (re)insert a row per UUID, which gives it the
        next ``AUTOINCREMENT`` number (``terminate`` kept from a live earlier row)."""
        self._revoked_table()
        now = time.time()
        expires = now + ttl.total_seconds() if ttl is not None else None
        with self._guard("revoke"), self._db.write() as conn:
            conn.execute("DELETE FROM machinery_revoked WHERE expires_at <= ?", (now,))
            for uuid in task_uuids:
                row = conn.execute("SELECT terminate FROM machinery_revoked WHERE uuid = ?", (uuid,)).fetchone()
                term = terminate or bool(row and row[0])
                if row is not None:
                    conn.execute("DELETE FROM machinery_revoked WHERE uuid = ?", (uuid,))
                conn.execute(
                    "INSERT INTO machinery_revoked (uuid, terminate, expires_at) VALUES (?, ?, ?)",
                    (uuid, int(term), expires),
                )

    def revocations_since(self, cursor: int, limit: int = 1000) -> tuple[list[Revocation], int]:
        """Rows numbered after ``cursor`` (one read transaction: the head number and the rows)."""
        from machinery.revoke import Revocation

        self._revoked_table()
        now = time.time()
        with self._guard("read revocations"), self._db.read() as conn:
            conn.execute("BEGIN")
            try:
                head = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'machinery_revoked'").fetchone()
                if head is None or head[0] < cursor:  # a new or emptied file: numbers restarted
                    cursor = 0
                rows = conn.execute(
                    "SELECT seq, uuid, terminate, expires_at FROM machinery_revoked WHERE seq > ? ORDER BY seq LIMIT ?",
                    (cursor, limit),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        out = [
            Revocation(uuid, bool(term), None if exp is None else exp - now)
            for _, uuid, term, exp in rows
            if exp is None or exp > now
        ]
        return out, (rows[-1][0] if rows else cursor)

    def rate_limit_reserve(self, key: str, interval: float, max_wait: float) -> tuple[bool, float]:
        """GCRA in one write transaction (``BEGIN IMMEDIATE``: serialised across processes)."""
        if not self._rates_ready:
            with self._guard("create rate limits table"), self._db.write(begin=False) as conn:
                conn.execute(_RATES_TABLE)
            self._rates_ready = True
        with self._guard("rate limit"), self._db.write() as conn:
            now = time.time()
            row = conn.execute("SELECT tat FROM machinery_rate_limits WHERE key = ?", (key,)).fetchone()
            tat = max(row[0], now) if row is not None else now
            wait = tat - now
            if wait > max_wait:
                return False, wait
            conn.execute(
                "INSERT INTO machinery_rate_limits (key, tat) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                (key, tat + interval),
            )
        return True, wait

    # -- waiting ----------------------------------------------------------------------------------

    def wait_for(self, task_uuid: str, timeout: float, poll_interval: float = 0.05) -> TaskState | None:
        """Block until the task completes or ``timeout`` passes.

        States stored by this process wake the waiter at once; states stored by other
        processes are seen within ``sqlite.poll_interval`` (polls start at 0.5 ms and back off
        by 1.25 times, so a quick task's state is seen within a fraction of a millisecond).
        """
        db = self._db
        deadline = time.monotonic() + timeout
        step = 0.0005
        limit = min(poll_interval, self.options.poll_interval) if poll_interval > 0 else self.options.poll_interval
        while True:
            gen = db.state_gen
            state = self._load_state(task_uuid)
            remaining = deadline - time.monotonic()
            if (state is not None and state.is_completed) or remaining <= 0:
                return state
            with db.changed:
                if db.state_gen == gen:
                    db.changed.wait(min(step, remaining))
            step = min(step * 1.25, limit)

    def close(self) -> None:
        """Release the transport (its database handle is closed with the last role). Idempotent."""
        self._release_transport()
