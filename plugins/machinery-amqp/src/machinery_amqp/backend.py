"""AMQP result backend, laid out as Go Machinery's (not recommended for many tasks).

Every task gets a queue named after its UUID (non-durable, auto-delete, ``x-message-ttl`` and
``x-expires`` = ``results_expire_in``) into which each new state is published, as Go does. Go
*consumes* the state when reading it; here a read takes every message, acknowledges all but the
newest and gives the newest back, so reads do not destroy the state and older states are
pruned. Completed members of a group are also published to a queue named after the group (Go's
``markTaskCompleted``), whose message count answers "is the group complete?", as in Go, so a
group sent by a Go producer (which writes no group record: Go's ``InitGroup`` is a no-op)
completes on Python workers.

The chord trigger is Go's marker queue ``<group>_chord_triggered`` (Go's ``TriggerChord`` fires
unless it exists), made first-wins among Python workers: it holds at most one message
(``x-max-length`` 1, ``x-overflow`` ``reject-publish``), and only the one publish that RabbitMQ
confirms wins; the others are nacked. A Python producer also writes ``<group>_meta`` (Go ignores
it): with it, completion is checked member by member and the chord gets results in group order;
without it (a Go producer), completion is Go's message count and the order is completion order.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pika
import pika.exceptions as pex

from machinery.plugin import (
    ZERO_TIME,
    Backend,
    BackendConnectionError,
    BackendError,
    Completion,
    DecodeError,
    State,
    decode_group_meta,
    decode_task_state,
    encode_group_meta,
    encode_task_state,
    redact_url,
)

from .transport import CONNECTION_ERRORS, ENV_OPTIONS, AMQPTransport, connect, describe

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

    from machinery.plugin import Config, GroupMeta, TaskState

__all__ = ["AMQPBackend"]

log = logging.getLogger("machinery.amqp")
T = TypeVar("T")

_PROPS = pika.BasicProperties(content_type="application/json", delivery_mode=2)
# Another reader may hold the state message for a round trip (longer on a loaded machine); look
# again before saying "none" (~0.2 s in all; only an existing, empty queue waits that long).
_EMPTY_RETRIES = (0.002, 0.01, 0.05, 0.15)
#: Seconds a read keeps trying while other readers hold a queue's newer messages (then, as empty).
_BUSY_PATIENCE = 5.0


class _Busy:
    """:meth:`AMQPBackend._newest` found newer messages held by another reader."""


_BUSY = _Busy()


def _go_body(state: TaskState) -> bytes:
    """The state as Go's AMQP backend writes it: only PENDING carries ``TaskName`` and
    ``CreatedAt`` (Go's ``NewReceivedTaskState``... set UUID and state only, and its AMQP
    backend, unlike Redis, copies nothing from the stored record)."""
    if state.state != State.PENDING.value and (state.task_name or state.created_at != ZERO_TIME):
        state = dataclasses.replace(state, task_name="", created_at=ZERO_TIME)
    return encode_task_state(state)


class _Missing(Exception):
    """The queue does not exist (404)."""


class _Session:
    def __init__(self, conn: BlockingConnection) -> None:
        self.conn = conn
        self.ch: BlockingChannel | None = None

    def channel(self) -> BlockingChannel:
        if self.ch is None or not self.ch.is_open:
            self.ch = self.conn.channel()
            self.ch.confirm_delivery()
        return self.ch


class AMQPBackend(Backend):
    """Result backend on RabbitMQ queues, compatible with Go Machinery's AMQP backend.

    :param url: ``amqp://`` or ``amqps://`` URL (several joined by the multiple-broker separator).
    :param config: the core config; the ``amqp`` section's exchange settings are not needed here.
    """

    supports_expiry: ClassVar[bool] = True
    persistent: ClassVar[bool] = True
    config_section: ClassVar[str | None] = "amqp"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS
    needs_group_record: ClassVar[bool] = False  # Go's groups have none: the group queue counts
    counts_completed: ClassVar[bool] = True  # Go's group queue (markTaskCompleted)

    def __init__(self, url: str, config: Config, *, transport: AMQPTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport: the URLs and the ``amqp:`` section, parsed once.
        self.transport: AMQPTransport = AMQPTransport.attach(self, url, config, transport)
        self.options = self.transport.options
        self._params = self.transport.params_for("backend")
        self._pool: list[_Session] = []
        self._lock = threading.Lock()
        self._declared: OrderedDict[str, None] = OrderedDict()
        self._closed = False
        # Go publishes every state through the configured exchange, routing key = the queue
        # name, the queue bound with that key. A fanout or headers exchange cannot route by
        # key (it would copy states into the task queues): those use the default exchange.
        o = self.options
        self._exchange = o.exchange if o.exchange and o.exchange_type in ("direct", "topic") else ""
        self._exchange_ready = False

    def __repr__(self) -> str:
        return f"AMQPBackend({redact_url(self.url)!r})"

    # -- plumbing ---------------------------------------------------------------------------------

    def _args(self) -> dict[str, Any]:
        # Go: int32(ResultsExpireIn * 1000), 0 -> DefaultResultsExpireIn; -1 (Python only): no expiry
        secs = self.lifetime()
        if secs is None:
            return {}
        ms = secs * 1000
        return {"x-message-ttl": ms, "x-expires": ms}

    def _run(self, fn: Callable[[BlockingChannel], T], what: str) -> T:
        if self._closed:
            raise BackendError("the AMQP result backend is closed")
        for attempt in (1, 2):
            with self._lock:
                session = self._pool.pop() if self._pool else None
            try:
                if session is None:
                    session = _Session(connect(self._params))
                result = fn(session.channel())
            except pex.ChannelClosedByBroker as exc:
                if session is not None:
                    session.ch = None
                    self._release(session)
                if exc.reply_code == 404 and "exchange" in str(exc.reply_text) and attempt == 1:
                    self._exchange_ready = False  # deleted under us: declared again on the retry
                    continue
                if exc.reply_code == 404:
                    raise _Missing(exc.reply_text) from None
                raise BackendError(f"RabbitMQ refused to {what}: {exc.reply_text}") from exc
            except pex.ProbableAuthenticationError as exc:
                raise BackendConnectionError(f"RabbitMQ at {describe(self._params)} refused the credentials") from exc
            except CONNECTION_ERRORS as exc:
                if session is not None:
                    try:
                        session.conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                if attempt == 2:
                    raise BackendConnectionError(
                        f"cannot {what}: RabbitMQ at {describe(self._params)} unreachable ({exc!r})"
                    ) from exc
                continue
            self._release(session)
            return result
        raise AssertionError("unreachable")

    def _release(self, session: _Session) -> None:
        with self._lock:
            if self._closed or len(self._pool) >= 16:
                try:
                    session.conn.close()
                except Exception:  # noqa: BLE001
                    pass
            else:
                self._pool.append(session)

    def _declare(self, ch: BlockingChannel, name: str, *, force: bool = False) -> None:
        if not force and name in self._declared:
            return
        # Go's declaration (common/amqp.go Connect): the exchange, then the queue non-durable,
        # auto-delete, with message TTL and queue expiry, bound with its own name.
        if self._exchange and (force or not self._exchange_ready):
            ch.exchange_declare(self._exchange, self.options.exchange_type, durable=True, auto_delete=False)
            self._exchange_ready = True
        ch.queue_declare(name, durable=False, auto_delete=True, arguments=self._args())
        if self._exchange:
            ch.queue_bind(name, self._exchange, routing_key=name)
        with self._lock:
            self._declared[name] = None
            if len(self._declared) > 10000:
                self._declared.popitem(last=False)

    def _put(self, ch: BlockingChannel, name: str, body: bytes) -> None:
        self._declare(ch, name)
        try:
            ch.basic_publish(self._exchange, name, body, _PROPS, mandatory=True)
        except pex.UnroutableError:
            # The queue expired or was deleted since we declared it: declare it and send again.
            self._declare(ch, name, force=True)  # (and the exchange, in case it was deleted)
            ch.basic_publish(self._exchange, name, body, _PROPS, mandatory=True)

    @staticmethod
    def _newest(ch: BlockingChannel, name: str) -> bytes | _Busy | None:
        """The newest message of ``name``, leaving only it in the queue.

        A message with others behind it (``message_count`` > 0) is older than they are: it is
        acknowledged (dropped) at once, never given back, so the queue's ready messages stay the
        newest ones in order. The one with none behind it is the answer, given back. When the
        queue runs dry after older messages, another reader holds the newest for a moment:
        :data:`_BUSY` tells the caller to read again (answering with an older state would make
        a finished task look unfinished, and a chord's last members could all conclude that the
        group is not complete).
        """
        passed = False
        while True:
            method, _props, payload = ch.basic_get(name, auto_ack=False)
            if method is None:
                return _BUSY if passed else None
            if method.message_count > 0:
                ch.basic_ack(method.delivery_tag)
                passed = True
                continue
            ch.basic_nack(method.delivery_tag, requeue=True)
            return bytes(payload)

    def _read(self, name: str) -> bytes | None:
        empty = iter(_EMPTY_RETRIES)
        busy_until = time.monotonic() + _BUSY_PATIENCE
        pause = 0.001
        while True:
            try:
                body = self._run(lambda ch: self._newest(ch, name), f"read {name!r}")
            except _Missing:
                return None
            if isinstance(body, bytes):
                return body
            if body is _BUSY and time.monotonic() < busy_until:
                time.sleep(pause)  # another reader holds the newest: it gives it back at once
                pause = min(pause * 2, 0.05)
                continue
            wait = next(empty, None)  # empty: perhaps another reader holds its only message
            if wait is None:
                return None
            time.sleep(wait)

    # -- primitives -------------------------------------------------------------------------------

    def _store_state(self, state: TaskState) -> None:
        """Publish the state into the task's queue (Go's ``updateState``)."""
        body = _go_body(state)
        self._run(lambda ch: self._put(ch, state.task_uuid, body), f"store the state of {state.task_uuid}")

    def _store_states(self, states: Sequence[TaskState], *, wait: bool = True) -> Completion:
        """Publish several states on one channel (confirmed: ``wait`` makes no difference)."""

        def go(ch: BlockingChannel) -> None:
            for st in states:
                self._put(ch, st.task_uuid, _go_body(st))

        if states:
            self._run(go, "store task states")
        return Completion.stored()

    def _load_state(self, task_uuid: str) -> TaskState | None:
        """The newest state message of the task's queue, left in place."""
        body = self._read(task_uuid)
        if body is None:
            return None
        try:
            return decode_task_state(body)
        except DecodeError as exc:
            raise BackendError(f"stored state of {task_uuid} is not valid: {exc.reason}") from exc

    def _load_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        return [self._load_state(u) for u in task_uuids]

    def _store_group(self, meta: GroupMeta) -> None:
        """Publish the group metadata to ``<group>_meta`` (member order; Go writes no group
        record and ignores this queue; nothing requires it)."""
        body = encode_group_meta(meta)
        self._run(lambda ch: self._put(ch, _meta_queue(meta.group_uuid), body), f"store group {meta.group_uuid}")

    def _load_group(self, group_uuid: str) -> GroupMeta | None:
        body = self._read(_meta_queue(group_uuid))
        if body is None:
            return None
        try:
            meta = decode_group_meta(body)
        except DecodeError as exc:
            raise BackendError(f"stored metadata of {group_uuid} is not valid: {exc.reason}") from exc
        meta.chord_triggered = self._queue_exists(_chord_triggered(group_uuid))
        return meta

    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        """Publish one message into Go's marker queue ``<group>_chord_triggered``, which takes
        at most one (``reject-publish``): the caller whose publish is confirmed wins, the others
        are nacked. The queue's existence stops Go workers (Go's ``TriggerChord``)."""
        if not (self._queue_exists(group_uuid) or self._queue_exists(_meta_queue(group_uuid))):
            return False  # an unknown group: neither completions nor a record
        name = _chord_triggered(group_uuid)
        args: dict[str, Any] = {"x-max-length": 1, "x-overflow": "reject-publish"}
        secs = self.lifetime()
        if secs is not None:  # no x-message-ttl: the marker must outlive every late member
            args["x-expires"] = secs * 1000

        def go(ch: BlockingChannel) -> bool:
            ch.queue_declare(name, durable=False, auto_delete=False, arguments=args)
            try:
                ch.basic_publish("", name, b"triggered", _PROPS, mandatory=True)
            except pex.NackError:
                return False  # another worker's marker is there
            return True

        return self._run(go, f"trigger the chord of {group_uuid}")

    def _completed_states(self, group_uuid: str) -> list[TaskState]:
        """The completion states in Go's group queue, oldest first, one per task (the newest of
        duplicates), read without consuming them (for a group without a record, as a Go
        producer sends them: in completion order, as Go's ``GroupTaskStates`` returns them)."""

        def go(ch: BlockingChannel) -> list[bytes]:
            bodies: list[bytes] = []
            last = 0
            while True:
                method, _props, payload = ch.basic_get(group_uuid, auto_ack=False)
                if method is None:
                    break
                last = method.delivery_tag
                bodies.append(payload)
                if method.message_count == 0:
                    break
            if last:
                ch.basic_nack(last, multiple=True, requeue=True)
            return bodies

        try:
            bodies = self._run(go, f"read the completions of {group_uuid}")
        except _Missing:
            return []
        by_task: dict[str, TaskState] = {}
        for body in bodies:
            try:
                st = decode_task_state(body)
            except DecodeError as exc:
                raise BackendError(f"a completion in {group_uuid} is not valid: {exc.reason}") from exc
            by_task.pop(st.task_uuid, None)
            by_task[st.task_uuid] = st
        return list(by_task.values())

    def _purge_completed(self, group_uuid: str) -> None:
        """Go's worker purges a completed group on the AMQP backend (``PurgeGroupMeta``): the
        group queue goes (and ``<group>_meta``); the trigger marker stays until it expires, so
        neither a Go nor a Python worker can fire the chord again."""

        def go(ch: BlockingChannel) -> None:
            for name in (group_uuid, _meta_queue(group_uuid)):
                ch.queue_delete(name)
                with self._lock:
                    self._declared.pop(name, None)

        try:
            self._run(go, f"purge group {group_uuid}")
        except (BackendError, _Missing) as exc:  # left to expire (x-expires)
            log.warning("could not delete the queues of group %s: %s", group_uuid, exc)

    def _delete(self, uuid: str) -> None:
        """Delete the task's or group's queues (state, completions, metadata, chord queues)."""

        def go(ch: BlockingChannel) -> None:
            for name in (uuid, _meta_queue(uuid), _chord_triggered(uuid)):
                ch.queue_delete(name)
                with self._lock:
                    self._declared.pop(name, None)

        self._run(go, f"delete {uuid}")

    # -- Go's group-completion queue --------------------------------------------------------------

    def _queue_exists(self, name: str) -> bool:
        try:
            self._run(lambda ch: ch.queue_declare(name, passive=True), f"inspect {name!r}")
        except _Missing:
            return False
        return True

    def _mark_completed(self, group_uuid: str, state: TaskState) -> None:
        """Publish a member's final state to the group's queue (Go's ``markTaskCompleted``)."""
        body = _go_body(state)
        self._run(lambda ch: self._put(ch, group_uuid, body), f"mark {state.task_uuid} completed")

    def _completed_count(self, group_uuid: str) -> int | None:
        """The number of messages in Go's group queue (Go's ``GroupCompleted`` test), None when
        there is no queue (no completion yet, or members sent without their group fields). The
        messages are not read: a reader holds them unacknowledged for a moment, and a
        concurrent count would miss them, so two last members could each see it incomplete."""
        try:
            count: int = self._run(
                lambda ch: ch.queue_declare(group_uuid, passive=True).method.message_count, f"inspect {group_uuid!r}"
            )
        except _Missing:
            return None
        return count

    def close(self) -> None:
        """Close the pooled connections. Idempotent."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for s in pool:
            try:
                s.conn.close()
            except Exception:  # noqa: BLE001
                pass
        self.transport.release(self)


def _meta_queue(group_uuid: str) -> str:
    return f"{group_uuid}_meta"


def _chord_triggered(group_uuid: str) -> str:
    # Go's TriggerChord treats an existing queue of this name as "already triggered".
    return f"{group_uuid}_chord_triggered"
