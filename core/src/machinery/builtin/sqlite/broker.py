"""The embedded broker: a queue table in a SQLite file, safe across threads and processes.

Delivery is at-least-once. Claiming a message leases it for ``visibility_timeout`` seconds
(state 2, ``visible_at`` = lease end); the consume template's heartbeat renews the leases of every message
this process still holds, so a long task is never delivered twice while its worker lives, and
a dead worker's messages become claimable again when their lease runs out. ``ack`` deletes the
message (the worker calls it after the final state is stored); ``nack(requeue=False)`` moves
it, body and all, to ``machinery_dead_letters``.

Messages with a future ETA are held (state 1) and claimed when due. An idle consumer sleeps
exactly until the next due ETA of its queue, is woken at once by publishes from its own
process, and checks ``PRAGMA data_version`` for commits from other processes: 0.5 ms after the
queue went idle, then 1.25 times later each time, up to every ``poll_interval`` (10 ms); that
check reads shared memory only, and an idle consumer's costs well under 1 % of a core.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.builtin.sqlite import ENV_OPTIONS
from machinery.builtin.sqlite._db import DELAYED, HAS_RETURNING, READY
from machinery.builtin.sqlite._errors import SQLiteBackendError, SQLiteBrokerError, SQLiteLockError
from machinery.builtin.sqlite.transport import SQLiteOptions, SQLiteRole, SQLiteTransport
from machinery.consume import PollingBroker
from machinery.interfaces import DeadLetter, Delivery
from machinery.signature import Signature, decode_signature

#: The first look for other processes' commits after the queue went idle (seconds); each next
#: look waits :data:`POLL_BACKOFF` times longer, up to ``sqlite.poll_interval``.
FIRST_POLL = 0.0005
POLL_BACKOFF = 1.25

if TYPE_CHECKING:
    from machinery.config import Config

__all__ = ["SQLiteBackendError", "SQLiteBroker", "SQLiteBrokerError", "SQLiteLockError", "SQLiteOptions"]

log = logging.getLogger("machinery.sqlite")

_INSERT = (
    "INSERT INTO machinery_messages (queue, priority, state, visible_at, deliveries, body, created_at) "
    "VALUES (?, ?, ?, ?, 0, ?, ?)"
)
_PROMOTE = "UPDATE machinery_messages SET state = 0 WHERE queue = ? AND state IN (1, 2) AND visible_at <= ?"
_CLAIM_RETURNING = (
    "UPDATE machinery_messages SET state = 2, visible_at = ?, deliveries = deliveries + 1 "
    "WHERE id IN (SELECT id FROM machinery_messages WHERE queue = ? AND state = 0 "
    "ORDER BY priority DESC, id LIMIT ?) RETURNING id, deliveries, priority, body"
)
_SELECT_READY = (
    "SELECT id, deliveries, priority, body FROM machinery_messages WHERE queue = ? AND state = 0 "
    "ORDER BY priority DESC, id LIMIT ?"
)
_CLAIMABLE = (
    "SELECT EXISTS (SELECT 1 FROM machinery_messages WHERE queue = ? AND state = 0) "
    "OR EXISTS (SELECT 1 FROM machinery_messages WHERE queue = ? AND state = 1 AND visible_at <= ?) "
    "OR EXISTS (SELECT 1 FROM machinery_messages WHERE queue = ? AND state = 2 AND visible_at <= ?)"
)
_RENEW = "UPDATE machinery_messages SET visible_at = ? WHERE id = ? AND deliveries = ? AND state = 2"
_NEXT_DUE = (
    "SELECT min(t) FROM ("
    "SELECT min(visible_at) AS t FROM machinery_messages WHERE queue = ? AND state = 1 UNION ALL "
    "SELECT min(visible_at) FROM machinery_messages WHERE queue = ? AND state = 2)"
)
_ACK = "DELETE FROM machinery_messages WHERE id = ? AND deliveries = ?"
_MESSAGES = frozenset({"machinery_messages"})


def _tag(delivery: Delivery) -> tuple[int, int]:
    tag = delivery.tag
    if not (isinstance(tag, tuple) and len(tag) == 2):
        raise ValueError(f"not a sqlite delivery tag: {tag!r}")
    return int(tag[0]), int(tag[1])


class SQLiteBroker(SQLiteRole, PollingBroker):
    """Broker on a SQLite file (``sqlite:///relative.db``, ``sqlite:////absolute/path.db``).

    Options come from the ``sqlite:`` config section, overridden by the URL's query string
    (``sqlite:///q.db?visibility_timeout=60``); see :class:`~machinery.builtin.sqlite.transport.SQLiteOptions`.

    :param url: the ``sqlite://`` URL.
    :param config: the core configuration.
    :param transport: the :class:`~machinery.builtin.sqlite.transport.SQLiteTransport` handing
        it out (None: the shared one of ``url`` and ``config``).
    :raises ConfigError: a malformed URL or option.
    """

    supports_native_delay: ClassVar[bool] = True
    supports_priority: ClassVar[bool] = True
    supports_pending_listing: ClassVar[bool] = True
    supports_delayed_listing: ClassVar[bool] = True
    supports_purge: ClassVar[bool] = True
    supports_dead_letters: ClassVar[bool] = True
    redelivers_unacked: ClassVar[bool] = True
    #: The default lease; a configured ``visibility_timeout`` replaces it (see :attr:`lease`).
    redelivery_timeout: ClassVar[float] = SQLiteOptions.visibility_timeout
    config_section: ClassVar[str | None] = "sqlite"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS
    error_class = SQLiteBrokerError
    #: Stop is noticed within 0.1 s (an idle fetch wakes on publishes and commits anyway).
    fetch_wait: ClassVar[float] = 0.1

    def __init__(self, url: str, config: Config, *, transport: SQLiteTransport | None = None) -> None:
        super().__init__(url, config)
        self._attach(url, config, transport)
        #: The template's heartbeat renews the leases of what this consumer holds.
        self.extend_interval = self.options.heartbeat
        #: Per queue: the last claim filled its batch (skip the cheap read check).
        self._full: dict[str, bool] = {}
        #: Claim with ``UPDATE ... RETURNING`` (False: SELECT then UPDATE, for SQLite < 3.35).
        self.use_returning = HAS_RETURNING

    @classmethod
    def default_read_ahead(cls, concurrency: int) -> int:
        """As many messages as task threads: every claim is a write transaction, and a claim for a
        few free threads at a time made the worker commit more claims than tasks it finished
        (10,000 no-op tasks, ``-c 8``: 3,599/s with a read-ahead of 1, 4,821/s with 8)."""
        return concurrency

    @property
    def lease(self) -> float:
        """Seconds a claimed message stays leased without a heartbeat (the redelivery timeout)."""
        return self.options.visibility_timeout

    # -- publishing ---------------------------------------------------------------------------

    def _row(self, body: bytes, signature: Signature, now: float) -> tuple[Any, ...]:
        eta = signature.eta
        due = eta.timestamp() if eta is not None else now
        state = DELAYED if due > now else READY
        return (self.queue_for(signature), signature.priority, state, max(due, now) if state else now, body, now)

    def publish(self, body: bytes, signature: Signature) -> None:
        """Insert the message (held until its ETA, if it has a future one)."""
        db = self._db
        with self._guard("publish"), db.write(begin=False) as conn:
            conn.execute(_INSERT, self._row(body, signature, time.time()))
        db.notify_messages()

    def publish_many(self, items: Sequence[tuple[bytes, Signature]]) -> None:
        """Insert every message in one transaction."""
        if not items:
            return
        db = self._db
        now = time.time()
        rows = [self._row(body, sig, now) for body, sig in items]
        with self._guard("publish"), db.write() as conn:
            conn.executemany(_INSERT, rows)
        db.notify_messages()

    # -- consuming ----------------------------------------------------------------------------

    def _claim(self, queue: str, limit: int) -> list[Delivery]:
        """Lease up to ``limit`` messages, in the group commit: while a task thread commits stored
        states and acknowledgements, the claim goes into its next transaction with them."""
        now = time.time()
        until = now + self.lease
        rows: list[Any] = []

        def claim(c: sqlite3.Connection) -> None:
            c.execute(_PROMOTE, (queue, now))
            if self.use_returning:
                got = c.execute(_CLAIM_RETURNING, (until, queue, limit)).fetchall()
                got.sort(key=lambda r: (-r[2], r[0]))
            else:
                got = [(i, d + 1, p, b) for i, d, p, b in c.execute(_SELECT_READY, (queue, limit)).fetchall()]
                c.executemany(
                    "UPDATE machinery_messages SET state = 2, visible_at = ?, deliveries = ? WHERE id = ?",
                    [(until, d, i) for i, d, _, _ in got],
                )
            rows[:] = got  # a transaction retried replaces what a failed one read

        self._db.submit(claim, [], self, "claim", tables=_MESSAGES)
        return [
            Delivery(body=bytes(body), queue=queue, tag=(msg_id, deliveries), redelivered=deliveries > 1)
            for msg_id, deliveries, _, body in rows
        ]

    def _claimable(self, conn: sqlite3.Connection, queue: str) -> bool:
        now = time.time()
        with self._guard("poll"):
            return bool(conn.execute(_CLAIMABLE, (queue, queue, now, queue, now)).fetchone()[0])

    def _next_due(self, conn: sqlite3.Connection, queue: str) -> float | None:
        with self._guard("poll"):
            due = conn.execute(_NEXT_DUE, (queue, queue)).fetchone()[0]
        return float(due) if due is not None else None

    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        """Claim up to ``max_n`` messages of ``queue``, waiting at most ``wait`` seconds for a
        publish in this process, a commit by another, or the next due ETA (or lease end)."""
        db = self._db
        deadline = time.time() + wait
        with self._guard("connect"):
            conn = db.checkout()
        broken = False
        try:
            while True:
                # Read both change markers *before* looking, so nothing committed after the
                # look can be missed by the idle wait.
                gen = db.message_gen
                version = self._data_version(conn)
                if self._full.get(queue) or self._claimable(conn, queue):
                    got = self._claim(queue, max_n)
                    # A full batch: skip the cheap read check next time.
                    self._full[queue] = len(got) == max_n
                    if got:
                        return got
                self._full[queue] = False
                if time.time() >= deadline or not self._idle_wait(conn, queue, gen, version, deadline):
                    return []
        except SQLiteBrokerError:
            broken = True
            raise
        finally:
            db.checkin(conn, broken)

    def _data_version(self, conn: sqlite3.Connection) -> int:
        with self._guard("poll"):
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def _idle_wait(self, conn: sqlite3.Connection, queue: str, gen: int, version: int, deadline: float) -> bool:
        """Sleep until a publish in this process, a commit by another process, or the next due
        ETA (or lease end) of ``queue`` (True), or until ``deadline`` (False)."""
        db = self._db
        poll = self.options.poll_interval
        # Quick looks right after activity (a message that follows the last one closely is seen
        # within a fraction of a millisecond), backing off to ``poll_interval`` when idle.
        step = min(FIRST_POLL, poll)
        next_due = self._next_due(conn, queue)
        while True:
            now = time.time()
            if next_due is not None and next_due <= now:
                return True
            if now >= deadline:
                return False
            timeout = min(step, deadline - now, next_due - now if next_due is not None else step)
            step = min(step * POLL_BACKOFF, poll)
            with db.changed:
                if db.message_gen != gen:
                    return True
                db.changed.wait(timeout)
                if db.message_gen != gen:
                    return True
            if self._data_version(conn) != version:
                return True

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        """Make the messages claimable at once, as if never delivered (the delivery count goes
        back down: a release is a consumer giving back what it did not run)."""
        tags = [_tag(d) for d in deliveries]
        with self._guard("release"), self._db.write() as conn:
            conn.executemany(
                "UPDATE machinery_messages SET state = 0, visible_at = ?, deliveries = deliveries - 1 "
                "WHERE id = ? AND deliveries = ? AND state = 2",
                [(time.time(), i, d) for i, d in tags],
            )
        self._db.notify_messages()

    def _extend(self, deliveries: Sequence[Delivery]) -> None:
        """Renew the leases of the messages this consumer holds (the template's heartbeat)."""
        tags = [_tag(d) for d in deliveries]
        until = time.time() + self.lease
        with self._guard("renew leases"), self._db.write() as conn:
            lost = [t for t in tags if conn.execute(_RENEW, (until, *t)).rowcount == 0]
        if lost:
            held = {_tag(d) for d in self._held_deliveries()}
            lost = [t for t in lost if t in held]  # not those acknowledged meanwhile
            if lost:
                log.warning(
                    "%d message lease(s) expired before renewal (another worker may run them again): ids %s",
                    len(lost),
                    ", ".join(str(t[0]) for t in lost[:10]),
                )

    # -- acknowledgement ----------------------------------------------------------------------

    def _ack(self, delivery: Delivery) -> None:
        """Delete the message (only while this delivery's lease is the current one), in the next
        group commit: while another thread commits, this returns at once and that thread
        deletes it in its next transaction.

        If the delete fails, the message comes back when the lease ends (at-least-once): the
        template stops renewing the lease either way. A failure known here raises; one met
        by the committing thread is logged.
        """
        tag = _tag(delivery)
        done = self._db.submit(_ACK, [tag], self, "ack", tables=_MESSAGES, wait=False)
        if done.done():
            done.result()
        else:
            done.add_done_callback(lambda error: self._ack_failed(tag, error))

    def _ack_failed(self, tag: tuple[int, int], error: BaseException | None) -> None:
        if error is not None:
            log.error(
                "message %d could not be acknowledged (%s); it is delivered again in about %gs and its task runs again",
                tag[0],
                error,
                self.lease,
            )

    def _defer(self, delivery: Delivery, delay: float) -> None:
        """Hold the message until ``delay`` seconds from now (it counts as delivered)."""
        with self._guard("nack"), self._db.write() as conn:
            conn.execute(
                "UPDATE machinery_messages SET state = ?, visible_at = ? WHERE id = ? AND deliveries = ?",
                (DELAYED, time.time() + delay, *_tag(delivery)),
            )
        self._db.notify_messages()

    def _dead_letter(self, delivery: Delivery) -> None:
        """Move the message, body and all, to ``machinery_dead_letters``."""
        tag = _tag(delivery)
        with self._guard("nack"), self._db.write() as conn:
            conn.execute(
                "INSERT INTO machinery_dead_letters (queue, body, deliveries, dead_at) "
                "SELECT queue, body, deliveries, ? FROM machinery_messages WHERE id = ? AND deliveries = ?",
                (time.time(), *tag),
            )
            conn.execute("DELETE FROM machinery_messages WHERE id = ? AND deliveries = ?", tag)

    # -- inspection ---------------------------------------------------------------------------

    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        """Messages ready in ``queue`` (including those of expired leases), in delivery order."""
        now = time.time()
        with self._guard("list pending"), self._db.read() as conn:
            rows = conn.execute(
                "SELECT body FROM machinery_messages WHERE queue = ? "
                "AND (state = 0 OR (state IN (1, 2) AND visible_at <= ?)) ORDER BY priority DESC, id",
                (queue or self.default_queue, now),
            ).fetchall()
        return [decode_signature(bytes(r[0])) for r in rows]

    def delayed_tasks(self) -> list[Signature]:
        """Messages held until their ETA, in every queue, soonest first."""
        with self._guard("list delayed"), self._db.read() as conn:
            rows = conn.execute(
                "SELECT body FROM machinery_messages WHERE state = 1 AND visible_at > ? ORDER BY visible_at, id",
                (time.time(),),
            ).fetchall()
        return [decode_signature(bytes(r[0])) for r in rows]

    def purge(self, queue: str | None = None) -> int:
        """Delete the waiting (ready and delayed) messages of ``queue``; leased ones stay."""
        with self._guard("purge"), self._db.write() as conn:
            cur = conn.execute(
                "DELETE FROM machinery_messages WHERE queue = ? AND (state IN (0, 1) OR visible_at <= ?)",
                (queue or self.default_queue, time.time()),
            )
            return int(cur.rowcount)

    def dead_letters(self, queue: str | None = None) -> list[bytes]:
        """Bodies of messages dropped with ``nack(requeue=False)``, oldest first (all queues if
        ``queue`` is None)."""
        with self._guard("list dead letters"), self._db.read() as conn:
            if queue is None:
                rows = conn.execute("SELECT body FROM machinery_dead_letters ORDER BY id").fetchall()
            else:
                rows = conn.execute(
                    "SELECT body FROM machinery_dead_letters WHERE queue = ? ORDER BY id", (queue,)
                ).fetchall()
        return [bytes(r[0]) for r in rows]

    def list_dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """Rows of ``machinery_dead_letters`` (all queues if ``queue`` is None), oldest first;
        the id is the row id."""
        sql = "SELECT id, queue, body, deliveries, dead_at FROM machinery_dead_letters"
        with self._guard("list dead letters"), self._db.read() as conn:
            if queue is None:
                rows = conn.execute(sql + " ORDER BY id").fetchall()
            else:
                rows = conn.execute(sql + " WHERE queue = ? ORDER BY id", (queue,)).fetchall()
        return [_dead_letter(r) for r in rows]

    def get_dead_letter(self, letter_id: str, queue: str | None = None) -> DeadLetter | None:
        """One row by id (None if absent, or not of ``queue`` when given)."""
        if not letter_id.isdigit():
            return None
        with self._guard("read a dead letter"), self._db.read() as conn:
            row = conn.execute(
                "SELECT id, queue, body, deliveries, dead_at FROM machinery_dead_letters WHERE id = ?",
                (int(letter_id),),
            ).fetchone()
        if row is None or (queue is not None and row[1] != queue):
            return None
        return _dead_letter(row)

    def remove_dead_letter(self, letter: DeadLetter) -> bool:
        """Delete the row; False when it was already gone."""
        if not letter.id.isdigit():
            return False
        with self._guard("remove a dead letter"), self._db.write() as conn:
            cur = conn.execute("DELETE FROM machinery_dead_letters WHERE id = ?", (int(letter.id),))
            return cur.rowcount > 0

    def close(self) -> None:
        """Stop renewing leases and release the transport (its database handle is closed with
        the last role). Idempotent.

        Messages still leased by this instance come back to their queue when the lease ends.
        """
        super().close()
        self._release_transport()


def _dead_letter(row: Sequence[Any]) -> DeadLetter:
    from datetime import datetime, timezone

    return DeadLetter(
        id=str(row[0]),
        queue=str(row[1]),
        body=bytes(row[2]),
        deliveries=int(row[3]),
        dead_at=datetime.fromtimestamp(float(row[4]), timezone.utc),
    )
