"""Group commit: commands of many threads sent to Redis in one pipeline, one round trip.

A worker runs tasks on several threads, and each task writes its states and acknowledges its
message. Sent one by one, every write is a round trip whose system calls and wake-ups cost more
than the write itself. :class:`CommandBatcher` lets concurrent callers share round trips: the first
caller becomes the *driver* and sends what is queued as one non-transactional pipeline; callers
arriving meanwhile queue their commands and wait, and one of them drives the next pipeline. A lone
caller is sent at once (no timer, no added latency); under load, pipelines grow by themselves.
Pipelines are sent one after the other, so commands reach Redis in the order they were queued.

Each caller's commands are one *unit*: sent in order, in the same pipeline. :meth:`execute`
returns only after Redis has answered all of them, so "stored" still means stored; an error
reply to any of them raises for that unit only, and a connection error fails every unit of the
pipeline (after redis-py's retries). :meth:`submit` queues a unit without waiting for it when a
pipeline is already on its way, and reports the outcome to a callback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from machinery_redis._fork import track

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # redis-py's optional C extension (``machinery-redis[hiredis]``)
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - without hiredis, redis-py packs
    _hiredis_pack = None

__all__ = ["CommandBatcher", "round_trip"]

log = logging.getLogger("machinery.redis")

#: Most commands sent in one pipeline (a burst is split into several round trips).
MAX_BATCH = 256
#: Seconds a non-urgent unit (an intermediate state, an ack) waits for company when the batcher
#: is idle: a quick task's RECEIVED/STARTED then share the round trip of its final state.
LINGER = 0.001

_local = threading.local()


def _waiter() -> threading.Lock:
    # One lock per thread, kept locked at rest: a thread waits for at most one unit at a time.
    lock: threading.Lock | None = getattr(_local, "lock", None)
    if lock is None:
        lock = _local.lock = threading.Lock()
        lock.acquire()
    return lock


Callback = Callable[[list[Any], "BaseException | None"], None]


class _Unit:
    __slots__ = ("build", "callback", "commands", "error", "key", "lead", "results", "sent", "waiter")

    def __init__(
        self,
        commands: Sequence[tuple[Any, ...]],
        callback: Callback | None,
        key: str | None = None,
        build: Callable[[], Sequence[tuple[Any, ...]]] | None = None,
    ) -> None:
        self.commands = commands
        self.callback = callback
        self.key = key
        self.build = build
        self.results: list[Any] = []
        self.error: BaseException | None = None
        self.lead = False
        self.sent = False
        self.waiter = _waiter() if callback is None else None


class CommandBatcher:
    """Shares pipelines between threads sending commands at the same time.

    :param client: a redis-py ``Redis`` or ``RedisCluster`` client.
    """

    def __init__(self, client: Any, linger: float = LINGER) -> None:
        self.client = client
        self.linger = linger
        self._lock = threading.Lock()
        self._queue: deque[_Unit] = deque()
        self._busy = False
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._closed = False
        self._cluster = isinstance(client, RedisCluster)
        self._conn: Any = None
        self._pid = os.getpid()
        track(self)

    def _after_fork_in_child(self) -> None:
        # The parent's queued units are the parent's to send; its connection and flusher thread
        # are not ours (see machinery_redis._fork).
        self._lock = threading.Lock()
        self._queue = deque()
        self._busy = False
        self._wake = threading.Event()
        self._flusher = None
        self._conn = None
        self._pid = os.getpid()

    def execute(
        self, commands: Sequence[tuple[Any, ...]], *, raise_on_error: bool = True, supersedes: str | None = None
    ) -> list[Any]:
        """Run ``commands`` (each ``(name, *args)``) in order and return their replies.

        :param raise_on_error: with False, error replies are returned in place (as exceptions)
            instead of raised; connection errors are raised either way.
        :param supersedes: drop the provisional units of this key not sent yet (see
            :meth:`submit_provisional`): these commands replace them.
        :raises redis.RedisError: the first error reply among these commands, or the connection
            error that failed their pipeline.
        """
        dropped: list[_Unit] = []
        with self._lock:
            if supersedes is not None:
                dropped = self._drop_provisional(supersedes)
            alone = not self._busy and not self._queue
            if alone:
                self._busy = True
            else:
                unit = _Unit(commands, None)
                self._queue.append(unit)
                drive = not self._busy
                self._busy = True
        if dropped:
            _dropped(dropped)
        if alone:  # nobody else is sending: no unit, no hand-over, straight to Redis
            return self._execute_alone(commands, raise_on_error)
        if not drive:
            assert unit.waiter is not None
            unit.waiter.acquire()  # released once answered, or when it is this unit's turn to drive
            drive = unit.lead
        if drive:
            self._drive(unit)
        error = unit.error
        if error is not None and (raise_on_error or error not in unit.results):
            raise error
        return unit.results

    def _execute_alone(self, commands: Sequence[tuple[Any, ...]], raise_on_error: bool) -> list[Any]:
        try:
            replies = self._exchange(list(commands))
        finally:
            with self._lock:
                more = bool(self._queue)  # queued meanwhile: send them (or hand over) as _drive does
                if not more:
                    self._busy = False
            if more:
                self._drive(None)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    def submit(
        self,
        commands: Sequence[tuple[Any, ...]],
        callback: Callback,
        *,
        urgent: bool = True,
        supersedes: str | None = None,
    ) -> None:
        """Queue ``commands`` to ride in the next pipeline without waiting for them.

        When no pipeline is on its way, an ``urgent`` unit is sent at once from this thread;
        another one waits up to :attr:`linger` seconds for company (a background thread sends
        it then, unless a caller has sent it along with its own commands meanwhile).
        ``callback(replies, error)`` runs on the thread that sent them, once Redis answered
        (``error`` is the first error reply or the connection error, else None).

        :param supersedes: drop the provisional units of this key not sent yet.
        """
        self._enqueue(_Unit(commands, callback), urgent, supersedes)

    def submit_provisional(self, key: str, build: Callable[[], Sequence[tuple[Any, ...]]], callback: Callback) -> None:
        """Queue writes that a later write of ``key`` makes pointless (a task's RECEIVED and
        STARTED, once its final state is on its way): they wait :attr:`linger` seconds like a
        non-urgent unit, and are dropped, unsent, if a unit that ``supersedes`` ``key`` is queued
        before they leave. ``build()`` makes the commands when they are sent, so a dropped unit
        costs no encoding either. A dropped unit's ``callback`` gets ``([], None)`` (nothing to
        store any more), on the thread that superseded it.
        """
        self._enqueue(_Unit((), callback, key, build), False, None)

    def _drop_provisional(self, key: str) -> list[_Unit]:
        # Under self._lock. Provisional units of ``key`` still queued are never sent; the caller
        # reports them (:func:`_dropped`) once it has released the lock.
        stale = [u for u in self._queue if u.build is not None and u.key == key]
        for u in stale:
            self._queue.remove(u)
        return stale

    def _enqueue(self, unit: _Unit, urgent: bool, supersedes: str | None) -> None:
        dropped: list[_Unit] = []
        try:
            with self._lock:
                if supersedes is not None:
                    dropped = self._drop_provisional(supersedes)
                self._queue.append(unit)
                if self._busy:
                    return
                if not urgent and not self._closed:
                    if self._flusher is None:
                        self._flusher = threading.Thread(
                            target=self._flush_loop, name="machinery-redis-batcher", daemon=True
                        )
                        self._flusher.start()
                    self._wake.set()
                    return
                self._busy = True
        finally:
            if dropped:
                _dropped(dropped)
        self._drive(unit)

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            time.sleep(self.linger)
            self._wake.clear()
            with self._lock:
                if self._busy or not self._queue:
                    continue
                self._busy = True
            self._drive(None)

    def close(self) -> None:
        """Send what is still queued and stop the background thread."""
        with self._lock:
            self._closed = True
            drive = bool(self._queue) and not self._busy
            if drive:
                self._busy = True
        self._wake.set()
        if drive:
            self._drive(None)
        with self._lock:
            if not self._busy:
                self._release()

    def _drive(self, own: _Unit | None) -> None:
        # Send pipelines until ``own`` is sent; then hand over to a waiting caller, or keep
        # sending what is left (units submitted without waiting), or stop when nothing is.
        while True:
            with self._lock:
                if not self._queue:  # only provisional units were queued, and were dropped
                    self._busy = False
                    return
                batch = [self._queue.popleft()]
                size = _size(batch[0])
                while self._queue and size + _size(self._queue[0]) <= MAX_BATCH:
                    unit = self._queue.popleft()
                    batch.append(unit)
                    size += _size(unit)
            self._send(batch)
            for unit in batch:
                if unit.callback is not None:
                    try:
                        unit.callback(unit.results, unit.error)
                    except Exception:
                        log.exception("a redis batch callback failed")
                elif unit is not own:
                    assert unit.waiter is not None
                    unit.waiter.release()
            handover: _Unit | None = None
            with self._lock:
                if not self._queue:
                    self._busy = False
                    return
                if own is None or own.sent:
                    handover = next((u for u in self._queue if u.waiter is not None), None)
                    if handover is not None:
                        handover.lead = True
            if handover is not None:
                assert handover.waiter is not None
                handover.waiter.release()
                return

    def _send(self, batch: list[_Unit]) -> None:
        commands: list[tuple[Any, ...]] = []
        for unit in batch:
            unit.sent = True
            if unit.build is not None:
                try:
                    unit.commands = unit.build()
                except Exception as exc:  # noqa: BLE001 - reported to the unit's callback
                    unit.commands, unit.build, unit.error = (), None, exc
                    continue
            commands.extend(unit.commands)
        try:
            replies = self._exchange(commands) if commands else []
        except BaseException as exc:  # noqa: BLE001 - handed to every unit of the pipeline
            for unit in batch:
                unit.error = exc
            return
        i = 0
        for unit in batch:
            n = len(unit.commands)
            unit.results = replies[i : i + n]
            i += n
            if unit.error is None:
                unit.error = next((r for r in unit.results if isinstance(r, Exception)), None)

    def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        # Only the driver sends (one pipeline at a time), so one connection, kept out of the
        # pool, is enough: the commands are packed and written at once and the replies read back,
        # without building a redis-py pipeline object for every round trip. A cluster client
        # spreads keys over nodes: its own pipeline does that.
        if self._cluster:
            pipe = self.client.pipeline(transaction=False)
            for cmd in commands:
                pipe.execute_command(*cmd)
            return list(pipe.execute(raise_on_error=False))
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            # (a forked child never writes on its parent's socket: it opens its own)
            conn = self._conn = self.client.connection_pool.get_connection()
            self._pid = os.getpid()
        return list(conn.retry.call_with_retry(lambda: round_trip(conn, commands), lambda _e: conn.disconnect()))

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                self.client.connection_pool.release(conn)


def _dropped(units: list[_Unit]) -> None:
    for unit in units:
        if unit.callback is not None:
            try:
                unit.callback([], None)
            except Exception:
                log.exception("a redis batch callback failed")


def _size(unit: _Unit) -> int:
    return len(unit.commands) if unit.build is None else 2


def _pack(conn: Any, commands: list[tuple[Any, ...]]) -> Any:
    """The commands in the Redis protocol, as redis-py would write them.

    Where redis-py itself packs with hiredis (its ``HiredisRespSerializer``, UTF-8 strict),
    ``hiredis.pack_command`` is called directly: redis-py first runs every argument through its
    Python encoder in a generator, about 3 µs a command, more than the rest of the packing.
    Anything that path does not cover (a command name of two words, ``bytearray``, ``None``,
    ``bool``...) goes to redis-py, which encodes it or raises its own ``DataError``.
    """
    if _hiredis_pack is not None and type(getattr(conn, "_command_packer", None)).__name__ == "HiredisRespSerializer":
        encoder = conn.encoder
        if encoder.encoding == "utf-8" and encoder.encoding_errors == "strict":
            try:
                packed = []
                for command in commands:
                    head = command[0]
                    if type(head) is not str or " " in head:
                        raise TypeError(head)
                    packed.append(_hiredis_pack(command))
                return [b"".join(packed)]
            except TypeError:
                pass
    return conn.pack_commands(commands)


def round_trip(conn: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Write ``commands`` on ``conn`` in one go and read one reply per command (error replies
    are returned as exceptions). Any other failure leaves unread replies behind: the connection
    is closed then, so the next use starts clean."""
    try:
        conn.send_packed_command(_pack(conn, commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        conn.disconnect()
        raise
