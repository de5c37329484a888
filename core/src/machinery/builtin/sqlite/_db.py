"""The embedded transport's database: the schema and :class:`Database`, the handle a
:class:`~machinery.builtin.sqlite.transport.SQLiteTransport` opens for its file and its roles
share (the URL and options are parsed in :mod:`~machinery.builtin.sqlite.transport`, errors
described in :mod:`~machinery.builtin.sqlite._errors`).

One database file can hold the queue, the results and the locks. Every process opens it in WAL
mode (readers never block the writer), with ``busy_timeout`` so writers from several processes
wait for each other instead of failing. Inside a process, the threads writing through one
handle queue on a :class:`threading.Lock` before asking SQLite for the write lock, so they hand
the lock over at once rather than sleeping in SQLite's busy handler, and publishes and stored
states wake that handle's waiting consumers at once. Connections come from a small pool per
handle (no connection is opened per message) and are never carried across ``fork()``. The
core keeps one transport, so one handle, per URL and configuration: the broker, backend and
lock of a server share it; servers with other configurations in the same process get handles
of their own and see each other as another process would (``busy_timeout``, and
``PRAGMA data_version`` checks every ``poll_interval`` at most).

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`)::

    machinery_messages(id INTEGER PRIMARY KEY, queue, priority, state, visible_at,
                       deliveries, body, created_at)
        state 0 = ready, 1 = delayed until visible_at (ETA), 2 = leased until visible_at
    machinery_dead_letters(id, queue, body, deliveries, dead_at)
    machinery_states(uuid PRIMARY KEY, data, expires_at)          -- data: Go's TaskState JSON
    machinery_groups(uuid PRIMARY KEY, data, chord_triggered, expires_at)
    machinery_locks(key PRIMARY KEY, owner, expires_at)

Times are Unix timestamps (``time.time()``), so every process on the machine agrees on them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from machinery.builtin.sqlite._commit import GroupCommit
from machinery.builtin.sqlite._errors import describe_error, is_busy
from machinery.errors import ConfigError

if TYPE_CHECKING:
    from machinery.builtin.sqlite.transport import SQLiteOptions

__all__ = ["HAS_RETURNING", "SCHEMA_VERSION", "Database", "rows_by_chunks"]

_log = logging.getLogger("machinery.sqlite")

#: Bumped when the tables change incompatibly.
SCHEMA_VERSION = 1
#: ``UPDATE ... RETURNING`` (SQLite >= 3.35) claims messages in one statement.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
#: Upserts (``INSERT ... ON CONFLICT DO UPDATE``) need SQLite >= 3.24.
MIN_SQLITE = (3, 24, 0)

# Message states.
READY, DELAYED, LEASED = 0, 1, 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS machinery_messages (
    id          INTEGER PRIMARY KEY,
    queue       TEXT    NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    state       INTEGER NOT NULL DEFAULT 0,
    visible_at  REAL    NOT NULL,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    body        BLOB    NOT NULL,
    created_at  REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS machinery_messages_claim
    ON machinery_messages (queue, state, priority DESC, id);
CREATE INDEX IF NOT EXISTS machinery_messages_due
    ON machinery_messages (queue, state, visible_at);
CREATE INDEX IF NOT EXISTS machinery_messages_delayed
    ON machinery_messages (state, visible_at);
CREATE TABLE IF NOT EXISTS machinery_dead_letters (
    id          INTEGER PRIMARY KEY,
    queue       TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    deliveries  INTEGER NOT NULL,
    dead_at     REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS machinery_states (
    uuid        TEXT PRIMARY KEY,
    data        BLOB NOT NULL,
    expires_at  REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS machinery_states_expiry
    ON machinery_states (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS machinery_groups (
    uuid            TEXT PRIMARY KEY,
    data            BLOB    NOT NULL,
    chord_triggered INTEGER NOT NULL DEFAULT 0,
    expires_at      REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS machinery_groups_expiry
    ON machinery_groups (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS machinery_locks (
    key         TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    expires_at  REAL NOT NULL
) WITHOUT ROWID;
"""


# -- database ------------------------------------------------------------------------------------

#: Every live handle, for the reset in a forked child.
_all: weakref.WeakSet[Database] = weakref.WeakSet()


class Database(GroupCommit):
    """One SQLite file as seen from this process: a connection pool, a process-wide write lock,
    a group commit for small writes (:class:`~machinery.builtin.sqlite._commit.GroupCommit`),
    and an in-process notifier so publishes and stored states wake waiting threads at once.

    Opened by :meth:`SQLiteTransport.open
    <machinery.builtin.sqlite.transport.SQLiteTransport.open>`: one per transport, shared by
    its roles.
    """

    def __init__(self, path: str, options: SQLiteOptions) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise ConfigError(
                "sqlite",
                f"SQLite {sqlite3.sqlite_version} is too old; the embedded transport needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer",
            )
        self.path = path
        self.options = options
        self._reset()
        _all.add(self)

    def _reset(self) -> None:
        # Called at creation and in a forked child: nothing of the parent's is reused there.
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ready = False
        self._init_lock = threading.Lock()
        self.changed = threading.Condition()
        #: Bumped (under :attr:`changed`) after each in-process commit touching messages/states.
        self.message_gen = 0
        self.state_gen = 0
        self._last_sweep = 0.0
        self._last_relief = 0.0
        #: A write failed on a full disk: checkpoint the WAL before writes until that succeeds.
        self._disk_full = False
        self._reset_commit()

    # -- connections ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise sqlite3.OperationalError(f"unable to open database file: cannot create {directory}") from exc
        if not os.path.exists(self.path):
            # Task arguments and results are in it: a new file is readable by its owner only
            # (SQLite gives the -wal and -shm files the database file's mode). An existing
            # file keeps its mode.
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass  # another process created it first
            except OSError as exc:
                raise sqlite3.OperationalError(f"unable to open database file {self.path}: {exc.strerror}") from exc
        conn = sqlite3.connect(
            self.path,
            timeout=self.options.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA synchronous={self.options.synchronous.upper()}")
            if not self._ready:
                self._init_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        with self._init_lock:
            if self._ready:
                return
            mode = self._switch_to_wal(conn)
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch the database to WAL mode (journal_mode={mode})")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} was written by a newer machinery (this one knows {SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION or not self._has_tables(conn):
                with self._write_lock:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        for stmt in _SCHEMA.split(";"):
                            if stmt.strip():
                                conn.execute(stmt)
                        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:  # SQLite may have rolled back already
                            with contextlib.suppress(sqlite3.Error):
                                conn.execute("ROLLBACK")
                        raise
            self._ready = True

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode=WAL``, retried for up to ``busy_timeout`` while another
        connection holds the file's lock.

        SQLite runs this pragma without its busy handler: it opens a read transaction to look
        at the header, then upgrades it to a write to mark the file as WAL, and a read-to-write
        upgrade fails at once with ``SQLITE_BUSY`` instead of waiting. Two processes opening a
        new file at the same moment (a worker's first poll and a ``machinery send``) hit this,
        so the wait that ``busy_timeout`` promises is done here.
        """
        deadline = time.monotonic() + self.options.busy_timeout
        pause = 0.001
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    @staticmethod
    def _has_tables(conn: sqlite3.Connection) -> bool:
        n = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name LIKE 'machinery\\_%' ESCAPE '\\'"
        ).fetchone()[0]
        return bool(n >= 5)

    def checkout(self) -> sqlite3.Connection:
        """A connection from the pool (a new one when the pool is empty)."""
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def checkin(self, conn: sqlite3.Connection, broken: bool = False) -> None:
        """Give a connection back (``broken`` ones, and extras beyond 16 idle, are closed)."""
        if not broken and not conn.in_transaction:
            with self._pool_lock:
                if len(self._idle) < 16:
                    self._idle.append(conn)
                    return
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection in autocommit mode, for reads (and single-statement writes)."""
        conn = self.checkout()
        broken = False
        try:
            yield conn
        except BaseException:
            broken = True
            raise
        finally:
            self.checkin(conn, broken)

    @contextlib.contextmanager
    def write(self, conn: sqlite3.Connection | None = None, *, begin: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), serialised in-process first.

        :param conn: a connection the caller holds (else one from the pool).
        :param begin: False for a single statement, which is its own transaction (autocommit).
        """
        own = conn is None
        # A pooled connection is taken once the lock is held, so threads queueing for the lock
        # hold no connection: a worker's task threads then share one or two connections instead
        # of opening one each (about 250 kB apiece). Until the schema exists, a new connection
        # creates it under this same lock, so it is taken first, as the caller's own is.
        late = own and self._ready
        c = None if late else (self.checkout() if conn is None else conn)
        timeout = self.options.busy_timeout
        if not self._write_lock.acquire(timeout=timeout if timeout > 0 else -1):
            if c is not None and own:
                self.checkin(c)
            raise sqlite3.OperationalError("database is locked (by other threads of this process)")
        if c is None:
            try:
                c = self.checkout()
            except BaseException:
                self._write_lock.release()
                raise
        broken = False
        try:
            if self._disk_full:
                self._relieve_full_disk(c)
            if not begin:
                yield c
                return
            try:
                c.execute("BEGIN IMMEDIATE")
                yield c
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        c.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            broken = True
            if describe_error(exc, 0)[0] == "disk-full":
                self._disk_full = True
            raise
        finally:
            self._write_lock.release()
            if own:
                self.checkin(c, broken)

    def _relieve_full_disk(self, conn: sqlite3.Connection) -> None:
        """While the disk is (or was) full, before a write (the write lock is held): checkpoint
        the WAL into the database file and truncate it to zero.

        The WAL holds every page version written since the last checkpoint, and SQLite only
        checkpoints once it holds ``wal_autocheckpoint`` pages (about 4 MB): left alone, space
        freed on the disk is eaten by the WAL's growth and work resumes only once the freed
        space covers the whole WAL. A checkpoint needs room only for the live pages in the
        database file, and the truncated WAL then gives its space back; so it is tried first,
        before the write, at most twice a second, until it succeeds once."""
        now = time.monotonic()
        if now - self._last_relief < 0.5:
            return
        self._last_relief = now
        try:
            busy, _frames, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return  # still no room: the write below fails as well, and says what to do
        if not busy:
            self._disk_full = False
            _log.warning(
                "sqlite database %s: space is back after a full disk; the write-ahead log was checkpointed "
                "and truncated",
                self.path,
            )

    def close(self) -> None:
        """Close every idle connection (connections in use are closed when given back)."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for c in idle:
            with contextlib.suppress(sqlite3.Error):
                c.close()

    # -- notifications ------------------------------------------------------------------------

    def notify_messages(self) -> None:
        """Wake this process's consumers (after publishing or requeueing)."""
        with self.changed:
            self.message_gen += 1
            self.changed.notify_all()

    def notify_states(self) -> None:
        """Wake this process's result waiters (after storing states)."""
        with self.changed:
            self.state_gen += 1
            self.changed.notify_all()

    def should_sweep(self, every: float = 60.0) -> bool:
        """True at most once per ``every`` seconds (for expiry clean-ups)."""
        now = time.monotonic()
        if now - self._last_sweep < every:
            return False
        self._last_sweep = now
        return True


def _after_fork_in_child() -> None:
    # Connections, locks and conditions of the parent must not be used in a forked child.
    for db in list(_all):
        db._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


def rows_by_chunks(items: list[Any], size: int = 500) -> Iterator[list[Any]]:
    """``items`` in chunks small enough for SQLite's bound-parameter limit."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
