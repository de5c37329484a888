"""A group commit for the embedded transport's small writes: stored states, acknowledgements.

A worker's task threads each write two or three rows per task (RECEIVED and STARTED, the final
state, the acknowledging delete). Written one transaction each, they queue on the database's
write lock, and the commits, not the statements, take the time. :class:`GroupCommit` turns that
queue into batches: a thread that submits a write while no other thread is committing becomes the
*leader* and commits it at once, alone (an idle worker waits for nothing); writes submitted while
the leader commits wait in a list, and the leader, once its commit is done, commits all of them in
its next transaction, in the order they came, until the list is empty. Nothing lingers: the
leader never returns while writes wait, so no write needs a timer or a thread of its own.

A write either waits for its commit (``wait=True``: the call returns once it is stored, or raises
the role's error) or is deferred (the caller gets a pending :class:`~machinery.completion.Completion`,
resolved by the leader after the commit, on the leader's thread). A failed transaction fails every
write in it, unless the failure is one write's own (a row too big for the file): then each write
of the round is retried in a transaction of its own. What a failed write was meant to acknowledge
stays leased, and comes back when its lease ends.

Within one transaction the writes are planned (:func:`plan`): consecutive writes of the same
statement run as one ``executemany``, and so do writes of the same statement separated only by
writes to other tables (a state upsert, an acknowledgement, a state upsert: the two upserts run
together, then the delete). Writes keyed by a column (state upserts by task UUID) keep only the
last row of each key: the transaction's outcome is the same, and a task's RECEIVED/STARTED that is
still waiting when its final state comes is never written.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, Union

from machinery.builtin.sqlite._errors import describe_error
from machinery.completion import Completion

if TYPE_CHECKING:
    from machinery.builtin.sqlite._db import Database

__all__ = ["GroupCommit", "Statement", "Translator", "Write", "plan"]

#: Failures caused by a write itself, not by the file: a failed round is then retried a write at a
#: time (``too-big``: a row over SQLite's size limit; ``error``: a constraint, say).
_OWN_FAULT = frozenset({"too-big", "error"})


class Translator(Protocol):
    """What turns a :class:`sqlite3.Error` into a role's error (the role itself)."""

    def _translated(self, exc: sqlite3.Error, op: str) -> Exception: ...


#: What a write runs: a statement (run with each of its rows), or a function given the connection
#: inside the transaction (a claim that reads what it changed).
Statement = Union[str, Callable[[sqlite3.Connection], None]]


class Write:
    """One submitted write: a statement, its parameter rows, the tables it touches and, for
    writes that replace whole rows by a key, the index of the key's parameter."""

    __slots__ = ("done", "key", "op", "role", "rows", "sql", "tables")

    def __init__(
        self,
        sql: Statement,
        rows: list[tuple[Any, ...]],
        tables: frozenset[str],
        key: int | None,
        role: Translator,
        op: str,
    ) -> None:
        self.sql, self.rows, self.tables, self.key = sql, rows, tables, key
        self.role, self.op = role, op
        self.done = Completion()


class _Block:
    """A statement and its rows within one transaction."""

    __slots__ = ("keyed", "rows", "sql", "tables")

    def __init__(self, sql: Statement, tables: frozenset[str]) -> None:
        self.sql, self.tables = sql, tables
        self.rows: list[tuple[Any, ...]] = []
        self.keyed: dict[Any, tuple[Any, ...]] = {}

    def params(self) -> list[tuple[Any, ...]]:
        return self.rows + list(self.keyed.values())


def plan(writes: list[Write]) -> Iterator[tuple[Statement, list[tuple[Any, ...]]]]:
    """The statements one transaction runs for ``writes``, each with its parameter rows.

    A write joins the latest block of the same statement unless a block after that one touches
    one of its tables (then the order matters and it starts a new block). In a keyed block a later
    row of the same key replaces the earlier one. A function is a block of its own.
    """
    blocks: list[_Block] = []
    for w in writes:
        target = None
        for b in reversed(blocks):
            if b.sql == w.sql and isinstance(w.sql, str):
                target = b
                break
            if b.tables & w.tables:
                break
        if target is None:
            target = _Block(w.sql, w.tables)
            blocks.append(target)
        if w.key is None:
            target.rows.extend(w.rows)
        else:
            k = w.key
            for row in w.rows:
                target.keyed.pop(row[k], None)
                target.keyed[row[k]] = row
    for b in blocks:
        yield b.sql, b.params()


class GroupCommit:
    """The group commit of a :class:`~machinery.builtin.sqlite._db.Database` (a mixin)."""

    #: Tables whose commits wake this process's result waiters.
    STATE_TABLES = frozenset({"machinery_states"})

    _commit_lock: threading.Lock
    _waiting: list[Write]
    _leader: int | None

    def _reset_commit(self) -> None:
        # At creation and in a forked child (a parent's leader does not exist there).
        self._commit_lock = threading.Lock()
        self._waiting = []
        self._leader = None

    def submit(
        self,
        sql: Statement,
        rows: list[tuple[Any, ...]],
        role: Translator,
        op: str,
        *,
        tables: frozenset[str],
        key: int | None = None,
        wait: bool = True,
    ) -> Completion:
        """Queue a write for the next commit and, if no thread is committing, commit it now.

        :param sql: the statement, run with each row; or a function of the connection, run
            inside the transaction (``rows`` then empty), which keeps what it reads itself.
        :param role: the broker, backend or lock, which translates a failure into its error.
        :param op: what the write does, for that error ("store state").
        :param tables: the tables the statement touches (for :func:`plan`).
        :param key: the index of the parameter that names the row the statement replaces.
        :param wait: return only once it is committed (a failure raises the role's error);
            False returns a completion that may still be pending.
        :raises SQLiteBrokerError: (or the backend's or lock's) with ``wait``, the commit failed.
        """
        w = Write(sql, rows, tables, key, role, op)
        me = threading.get_ident()
        with self._commit_lock:
            self._waiting.append(w)
            lead = self._leader is None
            if lead:
                self._leader = me
        if lead:
            self._lead()
        elif wait and self._leader == me:
            # Submitted from a completion callback on the leader's own thread: nobody else
            # commits while it leads, so it commits now rather than wait for itself.
            while not w.done.done():
                self._next_round()
        if wait:
            w.done.result()
        return w.done

    def _lead(self) -> None:
        try:
            while self._next_round():
                pass
        except BaseException as exc:
            # An interrupt (errors fail their round only): what waits fails with it rather than
            # wait for a leader that is gone.
            with self._commit_lock:
                left, self._waiting, self._leader = self._waiting, [], None
            _fail(left, exc)
            raise

    def _next_round(self) -> bool:
        """Commit what waits (False, and leadership given up, when nothing does)."""
        with self._commit_lock:
            batch = self._waiting
            if not batch:
                self._leader = None
                return False
            self._waiting = []
        try:
            self._round(batch)
        except Exception as exc:  # noqa: BLE001 - a write's own bug fails its round, not the leader
            _fail(batch, exc)
        except BaseException as exc:
            _fail(batch, exc)
            raise
        return True

    def _round(self, batch: list[Write]) -> None:
        db: Database = self  # type: ignore[assignment]
        error = self._transaction(batch)
        if error is not None and len(batch) > 1 and describe_error(error, 0)[0] in _OWN_FAULT:
            # One write is to blame (a result too big for the file, say): each write gets its own
            # transaction and outcome, so the others are not refused with it.
            for w in batch:
                self._round([w])
            return
        if error is None and any(w.tables & self.STATE_TABLES for w in batch):
            db.notify_states()
        for w in batch:
            w.done.resolve(None if error is None else w.role._translated(error, w.op))

    def _transaction(self, batch: list[Write]) -> sqlite3.Error | None:
        db: Database = self  # type: ignore[assignment]
        statements = list(plan(batch))
        single = len(statements) == 1 and len(statements[0][1]) == 1 and isinstance(statements[0][0], str)
        try:
            # One row alone is its own transaction (autocommit): no BEGIN and COMMIT.
            with db.write(begin=not single) as conn:
                for sql, params in statements:
                    if not isinstance(sql, str):
                        sql(conn)
                    elif len(params) == 1:
                        conn.execute(sql, params[0])
                    else:
                        conn.executemany(sql, params)
        except sqlite3.Error as exc:
            return exc
        return None


def _fail(writes: list[Write], exc: BaseException) -> None:
    """Resolve the writes not yet resolved with ``exc`` (as a RuntimeError when it is not an
    Exception: another thread's interrupt is not raised in the writer's thread)."""
    error = exc if isinstance(exc, Exception) else RuntimeError(f"the committing thread stopped: {exc!r}")
    for w in writes:
        if not w.done.done():
            w.done.resolve(error)
