"""The Redis broker: Go Machinery's keys and JSON, with at-least-once delivery on top.

Keys shared with Go Machinery (a Go producer or worker on the same server sees the same tasks):

- ``<queue>``: a list of signature JSON; producers ``RPUSH``, Go workers ``BLPOP``.
- ``delayed_tasks`` (``redis.delayed_tasks_key``): a sorted set of signature JSON scored by the
  ETA in Unix **nanoseconds**; due members are moved to the list named by their ``RoutingKey``.

Keys of this plugin only (the ``{queue}`` hash tag keeps them in the queue's cluster slot):

- ``{<queue>}:processing:<consumer>``: what one consumer has taken and not yet acknowledged.
  ``LMOVE`` (a Lua loop, up to the prefetch in one round trip) or ``BLMOVE`` moves a message
  there atomically; ``ack`` removes it (after the state is stored).
- ``{<queue>}:consumer:<consumer>``: the consumer's heartbeat, renewed every third of
  ``visibility_timeout`` by a background thread (so long tasks are fine).
- ``{<queue>}:consumers``: the set of consumer ids. Any live consumer of the queue returns the
  processing list of a consumer whose heartbeat expired (kill -9, lost host) to the queue head.
- ``{<queue>}:dead``: messages rejected with ``nack(requeue=False)`` (bounded list).

Consuming is the core's consume template (:class:`~machinery.plugin.PollingBroker`: stop within
a second, prefetch, back-off, giving back on stop); this module supplies its primitives. A
``consume`` has a consumer id, processing list and connection of its own; ``nack(requeue=True)``
puts the message at the queue's tail (Go's requeue), ``nack(delay=...)`` in the delayed set,
``nack(requeue=False)`` in ``{<queue>}:dead``; what ``consume`` took and did not hand out goes
back to the queue head, in order. A background thread renews heartbeats, moves due delayed
tasks, returns dead consumers' messages and retries settlements that met a lost connection.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

import redis

from machinery.plugin import (
    BrokerAuthenticationError,
    BrokerConnectionError,
    BrokerError,
    DeadLetter,
    DecodeError,
    Delivery,
    PollingBroker,
    PublishError,
    Signature,
    decode_signature,
    encode_signature,
    redact_url,
    wire,
)
from machinery_redis._fork import track
from machinery_redis.batch import CommandBatcher, round_trip
from machinery_redis.transport import ENV_OPTIONS, RedisTransport, build_client, is_cluster, translate_errors

if TYPE_CHECKING:
    from machinery.plugin import Config

__all__ = ["RedisBroker", "consumers_key", "dead_key", "eta_score", "processing_key"]

log = logging.getLogger("machinery.redis")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MOVE_BATCH = 100


#: Go's field name of the routing key (``RoutingKey``), from the core's wire constants.
ROUTING_FIELD = wire.SIGNATURE.routing_key


def processing_key(queue: str, consumer: str) -> str:
    """The list of messages ``consumer`` took from ``queue`` and has not acknowledged."""
    return f"{{{queue}}}:processing:{consumer}"


def heartbeat_key(queue: str, consumer: str) -> str:
    """The heartbeat key of ``consumer`` on ``queue`` (expires when the consumer dies)."""
    return f"{{{queue}}}:consumer:{consumer}"


def consumers_key(queue: str) -> str:
    """The set of consumer ids of ``queue``."""
    return f"{{{queue}}}:consumers"


def dead_key(queue: str) -> str:
    """The dead-letter list of ``queue``."""
    return f"{{{queue}}}:dead"


def eta_score(eta: datetime) -> int:
    """Go's score for a delayed task: ``ETA.UnixNano()``."""
    if eta.tzinfo is None:
        eta = eta.replace(tzinfo=timezone.utc)
    return (eta - _EPOCH) // timedelta(microseconds=1) * 1000


# Moves due members of the delayed set (KEYS[1]) to the list named by their routing key
# (ARGV[3] when empty or unreadable), atomically: many workers never move one twice.
# Returns {moved, score of the next member or false}.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  local q = ARGV[3]
  local ok, sig = pcall(cjson.decode, m)
  if ok and type(sig) == 'table' then
    for k, v in pairs(sig) do  -- Go matches field names case-insensitively
      if type(k) == 'string' and string.lower(k) == ARGV[4] and type(v) == 'string' and v ~= '' then q = v end
    end
  end
  redis.call('ZREM', KEYS[1], m)
  redis.call('RPUSH', q, m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or false}
"""

# Takes up to ARGV[1] messages from the queue (KEYS[1]) into the processing list (KEYS[2]) in one
# round trip, oldest first (the same order BLMOVE takes them in).
_TAKE = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local m = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not m then break end
  out[i] = m
end
return out
"""

# KEYS: processing, destination list. ARGV: body, 'head'|'tail', dead-letter limit (0 = none).
_SETTLE_TO_LIST = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[2] == 'head' then
  redis.call('LPUSH', KEYS[2], ARGV[1])
else
  redis.call('RPUSH', KEYS[2], ARGV[1])
  if tonumber(ARGV[3]) > 0 then redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1) end
end
return 1
"""

# KEYS: processing, delayed set. ARGV: body, new member, score.
_SETTLE_TO_DELAYED = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
"""

# KEYS: queue, processing, heartbeat, consumers. ARGV: consumer id, '1' to skip the heartbeat
# check (own consumer leaving). Returns the processing list to the queue head, in order.
_REAP = """
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[1], 'RIGHT', 'LEFT') do n = n + 1 end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
return n
"""


def _call(conn: Any, *args: Any) -> Any:
    """One command on a connection of our own (see :func:`machinery_redis.batch.round_trip`);
    an error reply is raised."""
    reply = round_trip(conn, [args])[0]
    if isinstance(reply, Exception):
        raise reply
    return reply


def _take(conn: Any, script: Any, queue: str, processing: str, n: int) -> list[bytes]:
    try:
        bodies = _call(conn, "EVALSHA", script.sha, 2, queue, processing, n)
    except redis.exceptions.NoScriptError:  # a restarted or flushed server forgot it
        _call(conn, "SCRIPT", "LOAD", script.script)
        bodies = _call(conn, "EVALSHA", script.sha, 2, queue, processing, n)
    return list(bodies or [])


class _Consumer:
    """One ``consume`` call: its keys, its own connection, and the bodies it has fetched and not
    yet settled (handed out, or waiting in the core's consume loop)."""

    def __init__(self, queue: str, cid: str) -> None:
        self.queue = queue
        self.cid = cid
        self.processing = processing_key(queue, cid)
        self.heartbeat = heartbeat_key(queue, cid)
        self.registry = consumers_key(queue)
        self.active = True
        self.inflight: Counter[bytes] = Counter()
        self.lock = threading.Lock()
        # Used by the consuming thread only: the take script, a client of its own (retries off)
        # and, outside a cluster, one connection of that client written to directly.
        self.take: Any = None
        self.blocking: Any = None
        self.cluster = False
        self.conn: Any = None
        #: Register (again) and give back what the processing list holds unknown, before the
        #: next fetch: at the start and after a lost connection.
        self.recover = True
        #: Whether the consumer was once registered on the server (it then has keys to undo).
        self.registered = False
        #: Whether the last fetch failed (the next one that works logs the connection restored).
        self.failing = False


class RedisBroker(PollingBroker):
    """Broker on Redis lists, wire- and key-compatible with Go Machinery, at-least-once.

    Consuming is the core's template (:class:`~machinery.plugin.PollingBroker`): this class
    fetches (a Lua loop of ``LMOVE``, then ``BLMOVE`` when the queue is empty), acknowledges
    (``LREM`` through the shared command batcher), requeues, delays and dead-letters.

    :param url: ``redis://``, ``rediss://`` or ``redis+socket://`` (see :mod:`machinery_redis`).
    :param config: the core config; its ``redis`` section is parsed into
        :class:`~machinery_redis.transport.RedisOptions`.
    :param transport: the transport handing this broker out (default: the process's shared one
        for ``url`` and ``config``).
    """

    supports_native_delay: ClassVar[bool] = True
    #: One list per queue, as Go Machinery reads it, has no room for priorities.
    supports_priority: ClassVar[bool] = False
    supports_pending_listing: ClassVar[bool] = True
    supports_delayed_listing: ClassVar[bool] = True
    redelivers_unacked: ClassVar[bool] = True
    #: Default ``visibility_timeout`` (15 s) plus the reaper's period (5 s), with margin.
    redelivery_timeout: ClassVar[float] = 30.0
    supports_purge: ClassVar[bool] = True
    #: ``{queue}:dead`` lists (up to ``dead_letter_limit`` each; 0 keeps none).
    supports_dead_letters: ClassVar[bool] = True
    config_section: ClassVar[str | None] = "redis"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS
    #: Back-off of the consume loop after a lost connection: 0.1 s doubling to 5 s.
    backoff_max: ClassVar[float] = 5.0
    #: ``prefetch`` is how many one fetch takes in one round trip (the worker's task slots bound
    #: what it holds): counting unacknowledged messages would make most fetches take one.
    prefetch_read_ahead: ClassVar[bool] = True

    def __init__(self, url: str, config: Config, *, transport: RedisTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport whose pool and batcher this broker uses.
        self.transport: RedisTransport = RedisTransport.attach(self, url, config, transport)
        self.target = self.transport.target
        self.options = self.transport.options
        self._released = False
        vt = self.options.visibility_timeout
        self._reap_every = min(max(vt / 3, 1.0), 5.0)
        self._lock = threading.Lock()
        self._beat_lock = threading.Lock()
        self._consumers: dict[str, _Consumer] = {}
        #: The running ``consume`` calls: (thread, queue) -> consumer (the core's primitives
        #: name the queue only; a consume runs in one thread).
        self._consuming: dict[tuple[int, str], _Consumer] = {}
        self._deferred: deque[tuple[str, Callable[[], None]]] = deque()
        self._maint: threading.Thread | None = None
        self._closing = threading.Event()
        self._closed = False
        self._scripts: dict[str, Any] = {}
        track(self)

    def _after_fork_in_child(self) -> None:
        # The consumers (their processing lists, in-flight messages, heartbeats) and the
        # maintenance thread are the parent's: a child that closes this broker must not give the
        # parent's unacknowledged messages back to their queue.
        self._lock = threading.Lock()
        self._beat_lock = threading.Lock()
        self._consumers = {}
        self._consuming = {}
        self._deferred = deque()
        self._maint = None
        self._closing = threading.Event()
        # The core's consume state (its locks, the messages it holds) starts afresh too; its
        # constructor only sets that state (and the url and config, unchanged).
        PollingBroker.__init__(self, self.url, self.config)

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The transport's redis-py client (its pool opens on first use)."""
        if self._released:
            raise BrokerError(f"the redis broker for {redact_url(self.url)} is closed")
        return self.transport.client

    @property
    def batcher(self) -> CommandBatcher:
        """The transport's command batcher (acknowledgements share round trips)."""
        return self.transport.batcher

    def _script(self, name: str, text: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(text)
        return script

    def _errors(self, what: str, **attrs: Any) -> Any:
        return translate_errors(what, self.url, BrokerError, BrokerConnectionError, **attrs)

    @property
    def _cluster(self) -> bool:
        return is_cluster(self.client)

    # -- publishing ---------------------------------------------------------------------------

    def _delay_score(self, signature: Signature) -> int | None:
        if signature.eta is None:
            return None
        score = eta_score(signature.eta)
        return score if score > time.time_ns() else None

    def publish(self, body: bytes, signature: Signature) -> None:
        """``RPUSH`` to the queue, or ``ZADD`` to the delayed set when the ETA is in the future.

        :raises machinery.errors.PublishError: Redis refused the command, or it could not be
            reached within ``redis.retries`` retries (the error then also is a ``ConnectionError``).
        """
        queue = self.queue_for(signature)
        score = self._delay_score(signature)
        with self.publish_errors(f"publish {signature.uuid}", signature.uuid):
            if score is None:
                self.client.rpush(queue, body)
            else:
                self.client.zadd(self.options.delayed_tasks_key, {body: score})

    def publish_command(self, signature: Signature, body: bytes) -> tuple[Any, ...]:
        """The command :meth:`publish` sends (for the transport's ``publish_with_state``)."""
        score = self._delay_score(signature)
        if score is None:
            return ("RPUSH", self.queue_for(signature), body)
        return ("ZADD", self.options.delayed_tasks_key, score, body)

    def publish_errors(self, what: str, task_uuid: str) -> Any:
        """Translates redis-py's errors into :class:`~machinery.errors.PublishError`."""
        return translate_errors(what, self.url, PublishError, _PublishConnectionError, task_uuid=task_uuid)

    def publish_many(self, items: Sequence[tuple[bytes, Signature]]) -> None:
        """Publish a batch in one round trip: one ``RPUSH`` per queue, one ``ZADD`` for delays."""
        if not items:
            return
        lists: dict[str, list[bytes]] = {}
        delayed: dict[bytes, int] = {}
        for body, sig in items:
            score = self._delay_score(sig)
            if score is None:
                lists.setdefault(self.queue_for(sig), []).append(body)
            else:
                delayed[body] = score
        first = items[0][1].uuid
        with self.publish_errors(f"publish {len(items)} tasks (first {first})", first):
            pipe = self.client.pipeline(transaction=False)
            for queue, bodies in lists.items():
                pipe.rpush(queue, *bodies)
            if delayed:
                pipe.zadd(self.options.delayed_tasks_key, delayed)
            pipe.execute()

    # -- consuming (the core's consume template) ----------------------------------------------

    def _consume_started(self, queue: str, prefetch: int) -> None:
        """Register a consumer of ``queue`` for the ``consume`` starting in this thread: its id,
        processing list and a connection of its own (opened by the first fetch, so that a server
        down at start is retried like one lost later)."""
        cid = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        consumer = _Consumer(queue, cid)
        consumer.take = self._script("take", _TAKE)
        consumer.blocking = build_client(self.target, self.options, retries=0)
        # A cluster client routes each command to its node instead of one connection.
        consumer.cluster = is_cluster(consumer.blocking)
        with self._lock:
            self._consumers[cid] = consumer
            self._consuming[(threading.get_ident(), queue)] = consumer
        self._ensure_maintenance()

    def _consumer_of(self, queue: str) -> _Consumer:
        consumer = self._consuming.get((threading.get_ident(), queue))
        if consumer is None:  # a generator resumed by another thread than the one that started it
            with self._lock:
                consumer = next(c for (_, q), c in self._consuming.items() if q == queue)
        return consumer

    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        """Up to ``max_n`` messages moved atomically into this consumer's processing list: one
        Lua loop of ``LMOVE`` in one round trip, then, only when the queue is empty, one
        ``BLMOVE`` blocking at most ``wait`` seconds (and the poll period)."""
        consumer = self._consumer_of(queue)
        if self._closing.is_set():  # close() gave this consumer's messages back: take no more
            time.sleep(wait)
            return ()
        processing = consumer.processing
        block = min(wait, self.options.block_timeout)
        try:
            if consumer.recover:
                self._recover(consumer)
                consumer.recover, consumer.registered = False, True
            if consumer.cluster:
                bodies = consumer.take(keys=[queue, processing], args=[max_n], client=consumer.blocking)
                if not bodies and block > 0:
                    body = consumer.blocking.blmove(queue, processing, block, "LEFT", "RIGHT")
                    bodies = [] if body is None else [body]
            else:
                conn = consumer.conn
                if conn is None:
                    conn = consumer.conn = consumer.blocking.connection_pool.get_connection()
                bodies = _take(conn, consumer.take, queue, processing, max_n)
                if not bodies and block > 0:
                    body = _call(conn, "BLMOVE", queue, processing, "LEFT", "RIGHT", block)
                    bodies = [] if body is None else [body]
        except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
            # Not transient: the worker says so and waits long before trying again.
            raise BrokerAuthenticationError(
                f"redis consumer of {queue!r}: {redact_url(self.url)} refused the credentials "
                f"({type(exc).__name__}: {redact_url(str(exc))})"
            ) from None
        except redis.RedisError as exc:
            # The core logs one line per back-off step (no traceback), then calls _reconnect.
            consumer.recover = consumer.failing = True
            raise BrokerConnectionError(
                f"cannot reach {redact_url(self.url)} ({type(exc).__name__}: {redact_url(str(exc))})"
            ) from None
        if consumer.failing:
            log.info("redis consumer of %r: connection to %s restored", queue, redact_url(self.url))
            consumer.failing = False
        if not bodies:
            return ()
        with consumer.lock:
            inflight = consumer.inflight
            for body in bodies:
                inflight[body] += 1
        return [Delivery(body=body, queue=queue, tag=consumer) for body in bodies]

    def _reconnect(self) -> None:
        """After a lost connection: the consumers of this thread register again, and give back
        what their processing lists hold that was never handed out (a ``BLMOVE`` whose reply was
        lost with the connection), before their next fetch."""
        me = threading.get_ident()
        with self._lock:
            for (thread, _), consumer in self._consuming.items():
                if thread == me:
                    consumer.recover = True

    def _consume_ended(self, queue: str) -> None:
        """Close the consumer's connection; it leaves (unregisters, its processing list goes
        back to the queue head) now when nothing it handed out is unsettled, else with the last
        settle."""
        with self._lock:
            consumer = self._consuming.pop((threading.get_ident(), queue), None)
            if consumer is None:  # ended by another thread than the one that started it
                key = next((k for k, c in self._consuming.items() if c.queue == queue), None)
                consumer = self._consuming.pop(key) if key is not None else None
        if consumer is None:
            return
        with consumer.lock:
            consumer.active = False
            idle = not consumer.inflight
        if idle and not self._closed and consumer.registered:
            self._leave(consumer)
        elif idle:  # never registered (server down, credentials refused): nothing to undo there
            with self._lock:
                self._consumers.pop(consumer.cid, None)
        if consumer.conn is not None:
            consumer.conn.disconnect()
            consumer.conn = None
        if consumer.blocking is not None:
            consumer.blocking.close()
            consumer.blocking = None

    def _recover(self, consumer: _Consumer) -> None:
        # (Re-)register, then give back anything in our processing list that was never fetched
        # as far as we know (a BLMOVE whose reply was lost with the connection).
        self._beat([consumer])
        with consumer.lock:
            known = Counter(consumer.inflight)
        for body in self.client.lrange(consumer.processing, 0, -1):
            if known[body] > 0:
                known[body] -= 1
            else:
                self._to_list(consumer, body, consumer.queue, "head")

    def _ack(self, delivery: Delivery) -> None:
        """Remove the message from this consumer's processing list (the state is stored)."""
        consumer: _Consumer = delivery.tag
        body = delivery.body

        def done(_replies: list[Any], error: BaseException | None) -> None:
            if error is None:
                self._settled(consumer, body)
            else:  # the state is stored: retry the removal in the background (or it is redelivered)
                self._settle_later(consumer, body, "ack", lambda: self.client.lrem(consumer.processing, 1, body), error)

        # Rides in the next pipeline of the shared batcher (the next task's state writes), or
        # leaves after the batcher's linger (1 ms) when none comes: never a round trip of its
        # own while tasks keep coming. The state was stored before this is called, so waiting
        # costs nothing but a redelivery if the worker dies meanwhile (at-least-once).
        self.batcher.submit([("LREM", consumer.processing, 1, body)], done, urgent=False)

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        """``nack(requeue=True)``: back to the queue's tail (Go's requeue)."""
        for d in deliveries:
            consumer: _Consumer = d.tag
            body = d.body
            op = functools.partial(self._to_list, consumer, body, consumer.queue, "tail")
            self._settle(consumer, body, "requeue", op)

    def _give_back(self, deliveries: Sequence[Delivery]) -> None:
        """What ``consume`` took and did not hand out goes back to the queue head, in order (the
        oldest messages of the queue: they keep their place)."""
        for d in reversed(deliveries):
            consumer: _Consumer = d.tag
            body = d.body
            if self._closed:  # close() returned the processing lists to the queue heads already
                self._settled(consumer, body)
                continue
            op = functools.partial(self._to_list, consumer, body, consumer.queue, "head")
            self._settle(consumer, body, "give back", op)

    def _defer(self, delivery: Delivery, delay: float) -> None:
        """``nack(delay=...)``: into Go's delayed set, scored ``delay`` seconds from now."""
        consumer: _Consumer = delivery.tag
        body = delivery.body
        member = self._for_queue(body, delivery.queue)
        score = time.time_ns() + int(delay * 1e9)
        self._settle(consumer, body, "delay", lambda: self._to_delayed(consumer, body, member, score))

    def _dead_letter(self, delivery: Delivery) -> None:
        """``nack(requeue=False)``: to ``{queue}:dead`` (dropped when ``dead_letter_limit`` is 0)."""
        consumer: _Consumer = delivery.tag
        body = delivery.body
        op: Callable[[], Any]
        if self.options.dead_letter_limit > 0:
            op = functools.partial(self._to_list, consumer, body, dead_key(consumer.queue), "tail")
        else:
            op = lambda: self.client.lrem(consumer.processing, 1, body)  # noqa: E731
        self._settle(consumer, body, "dead-letter", op)

    def _for_queue(self, body: bytes, queue: str) -> bytes:
        # A delayed member goes where its routing key says: make that the queue it came from.
        try:
            wire = json.loads(body)
            routing = next((v for k, v in wire.items() if k.lower() == ROUTING_FIELD.lower()), "")
        except (ValueError, AttributeError):
            return body
        if routing == queue:
            return body
        try:
            sig = decode_signature(body)
        except DecodeError:
            return body
        sig.routing_key = queue
        return encode_signature(sig)

    def _to_list(self, consumer: _Consumer, body: bytes, dest: str, end: str) -> None:
        # dest is the queue or {queue}:dead: the same cluster slot as the processing list.
        limit = self.options.dead_letter_limit
        self._script("settle_list", _SETTLE_TO_LIST)(keys=[consumer.processing, dest], args=[body, end, limit])

    def _to_delayed(self, consumer: _Consumer, body: bytes, member: bytes, score: int) -> None:
        key = self.options.delayed_tasks_key
        if self._cluster:  # different slots: add first, then remove (a crash duplicates, never loses)
            self.client.zadd(key, {member: score})
            self.client.lrem(consumer.processing, 1, body)
            return
        self._script("settle_delayed", _SETTLE_TO_DELAYED)(keys=[consumer.processing, key], args=[body, member, score])

    def _settled(self, consumer: _Consumer, body: bytes) -> None:
        with consumer.lock:
            consumer.inflight[body] -= 1
            if consumer.inflight[body] <= 0:
                del consumer.inflight[body]
            done = not consumer.active and not consumer.inflight
        if done:
            self._leave(consumer)

    def _settle(self, consumer: _Consumer, body: bytes, what: str, op: Callable[[], Any]) -> None:
        try:
            op()
        except redis.RedisError as exc:
            self._settle_later(consumer, body, what, op, exc)
        else:
            self._settled(consumer, body)

    def _settle_later(
        self, consumer: _Consumer, body: bytes, what: str, op: Callable[[], Any], exc: BaseException
    ) -> None:
        log.warning(
            "redis %s of a message from %r failed (%s); retrying in the background",
            what,
            consumer.queue,
            redact_url(str(exc)),
        )

        def run() -> None:
            op()
            self._settled(consumer, body)

        self._deferred.append((what, run))
        self._ensure_maintenance()

    def _leave(self, consumer: _Consumer) -> None:
        def run() -> None:
            keys = [consumer.queue, consumer.processing, consumer.heartbeat, consumer.registry]
            with self._beat_lock:  # so that no heartbeat in flight registers it again
                with self._lock:
                    self._consumers.pop(consumer.cid, None)
                self._script("reap", _REAP)(keys=keys, args=[consumer.cid, "1"])

        try:
            run()
        except redis.RedisError:
            self._deferred.append(("unregister", run))

    # -- background: heartbeats, delayed tasks, dead consumers, deferred operations -----------

    def _ensure_maintenance(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._maint is None or not self._maint.is_alive():
                self._maint = threading.Thread(target=self._maintain, name="machinery-redis-maintenance", daemon=True)
                self._maint.start()

    def _beat(self, consumers: Sequence[_Consumer]) -> None:
        if not consumers:
            return
        ttl = int(self.options.visibility_timeout * 1000)
        pipe = self.client.pipeline(transaction=False)
        for c in consumers:
            pipe.set(c.heartbeat, b"1", px=ttl)
            pipe.sadd(c.registry, c.cid)
        pipe.execute()

    def _maintain(self) -> None:
        next_beat = next_reap = 0.0
        failing = False
        backoff = 0.1
        while not self._closing.is_set():
            now = time.monotonic()
            try:
                with self._beat_lock:
                    with self._lock:
                        consumers = list(self._consumers.values())
                    if now >= next_beat:
                        self._beat(consumers)
                        next_beat = now + self.options.visibility_timeout / 3
                while self._deferred:
                    _what, op = self._deferred[0]
                    op()
                    self._deferred.popleft()
                if now >= next_reap:
                    self._reap({c.queue for c in consumers}, {c.cid for c in consumers})
                    next_reap = now + self._reap_every
                wait = self._move_due()
                if failing:
                    log.info("redis broker maintenance: connection to %s restored", redact_url(self.url))
                    failing, backoff = False, 0.1
            except redis.RedisError as exc:
                if not failing:
                    log.warning("redis broker maintenance failed (%s); retrying with back-off", redact_url(str(exc)))
                failing = True
                wait = backoff
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("redis broker maintenance failed unexpectedly; retrying")
                wait = 1.0
            self._closing.wait(max(0.0, min(wait, next_beat - time.monotonic(), next_reap - time.monotonic())))

    def _reap(self, queues: set[str], own: set[str]) -> None:
        reap = self._script("reap", _REAP)
        for queue in queues:
            for raw in self.client.smembers(consumers_key(queue)):
                cid = raw.decode() if isinstance(raw, bytes) else raw
                if cid in own:
                    continue
                keys = [queue, processing_key(queue, cid), heartbeat_key(queue, cid), consumers_key(queue)]
                moved = reap(keys=keys, args=[cid, "0"])
                if moved and moved > 0:
                    log.warning("returned %d unacknowledged task(s) of dead consumer %s to %r", moved, cid, queue)

    def _move_due(self) -> float:
        """Move due delayed tasks to their queues; returns seconds until the next look."""
        key = self.options.delayed_tasks_key
        poll = self.options.delayed_poll
        now = time.time_ns()
        if self._cluster:
            moved = 0
            for member in self.client.zrangebyscore(key, "-inf", now, start=0, num=_MOVE_BATCH):
                if self.client.zrem(key, member):  # whoever removes it moves it
                    try:
                        queue = decode_signature(member).routing_key or self.default_queue
                    except DecodeError:
                        queue = self.default_queue
                    self.client.rpush(queue, member)
                    moved += 1
            nxt = self.client.zrange(key, 0, 0, withscores=True)
            next_score = nxt[0][1] if nxt else None
        else:
            moved, next_score = self._script("move_due", _MOVE_DUE)(
                keys=[key], args=[now, _MOVE_BATCH, self.default_queue, ROUTING_FIELD.lower()]
            )
        if moved >= _MOVE_BATCH:
            return 0.0
        if next_score is None:
            return poll
        return max(0.0, min(poll, (float(next_score) - time.time_ns()) / 1e9))

    # -- listing and admin ----------------------------------------------------------------------

    def _decode_all(self, raws: list[bytes], where: str) -> list[Signature]:
        out = []
        for raw in raws:
            try:
                out.append(decode_signature(raw))
            except DecodeError as exc:
                log.warning("skipping an undecodable message in %s: %s", where, exc.reason)
        return out

    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        """Signatures waiting in the queue's list, oldest first (Go's ``GetPendingTasks``)."""
        queue = queue or self.default_queue
        with self._errors(f"list pending tasks of {queue!r}"):
            raws = self.client.lrange(queue, 0, -1)
        return self._decode_all(raws, repr(queue))

    def delayed_tasks(self) -> list[Signature]:
        """Signatures in the delayed set (all queues, as in Go), soonest first."""
        key = self.options.delayed_tasks_key
        with self._errors("list delayed tasks"):
            raws = self.client.zrange(key, 0, -1)
        return self._decode_all(raws, repr(key))

    def dead_letters(self, queue: str | None = None) -> list[bytes]:
        """Messages rejected with ``nack(requeue=False)`` from ``queue``, oldest first."""
        queue = queue or self.default_queue
        with self._errors(f"list dead letters of {queue!r}"):
            return list(self.client.lrange(dead_key(queue), 0, -1))

    def list_dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """The ``{queue}:dead`` list, oldest first (every queue's, found with ``SCAN``, when
        ``queue`` is None). Redis keeps no time or count for them; the id is a hash of the
        body (identical bodies share it, and are interchangeable)."""
        import hashlib

        with self._errors("list dead letters"):
            if queue is None:
                found = self.client.scan_iter(match="{*}:dead")
                keys = sorted({k.decode() if isinstance(k, bytes) else str(k) for k in found})
                queues = [k[1 : -len("}:dead")] for k in keys]
            else:
                queues = [queue]
            out: list[DeadLetter] = []
            for q in queues:
                for raw in self.client.lrange(dead_key(q), 0, -1):
                    body = bytes(raw)
                    out.append(DeadLetter(hashlib.sha1(body).hexdigest()[:16], q, body))  # an id, not security
        return out

    def remove_dead_letter(self, letter: DeadLetter) -> bool:
        """``LREM`` one copy of the body from ``{queue}:dead``; False when none was left."""
        with self._errors(f"remove a dead letter of {letter.queue!r}"):
            return int(self.client.lrem(dead_key(letter.queue), 1, letter.body)) > 0

    def purge(self, queue: str | None = None) -> int:
        """Delete the queue's waiting messages (not delayed or in-flight ones); returns how many."""
        queue = queue or self.default_queue
        with self._errors(f"purge {queue!r}"):
            pipe = self.client.pipeline(transaction=True)
            pipe.llen(queue)
            pipe.delete(queue)
            count, _ = pipe.execute()
        return int(count)

    def close(self) -> None:
        """Stop the background thread, give unacknowledged messages back, release the pool."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        maint = self._maint
        if maint is not None and maint is not threading.current_thread():
            maint.join(timeout=5)
        super().close()
        with self._lock:
            consumers = list(self._consumers.values())
        if self.transport.is_open:
            for c in consumers:  # messages still unacknowledged go back to their queue now
                self._leave(c)
        self._released = True
        self.transport.release(self)


class _PublishConnectionError(PublishError, BrokerConnectionError):
    """A publish failed because Redis could not be reached."""
