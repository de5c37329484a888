"""RabbitMQ broker, declaration- and wire-compatible with Go Machinery's AMQP broker.

Threading (pika is not thread-safe):

* publishing goes through :class:`~machinery_amqp._publisher.Publisher`, one connection owned
  by a dedicated I/O thread, with publisher confirms pipelined across threads and batches;
* consuming is the core's push template (:class:`~machinery.plugin.PushBroker`): each queue
  consumed gets a subscription with its own connection, serviced by its own I/O thread (so
  heartbeats flow while every task slot is busy), which puts what ``basic_consume`` delivers
  into the core's inbox; ``ack``/``nack`` from task threads are queued and marshalled to it
  with ``add_callback_threadsafe``, one wake-up for all the settlements queued meanwhile, and
  acknowledgements of contiguous delivery tags go out as one ``basic.ack`` with ``multiple``;
* declarations, listing and purging use a small lock-protected blocking connection.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import pika
import pika.exceptions as pex

from machinery.plugin import (
    BrokerAuthenticationError,
    BrokerConnectionError,
    BrokerError,
    DecodeError,
    Delivery,
    Inbox,
    PublishError,
    PushBroker,
    Signature,
    decode_signature,
    redact_url,
)

from ._publisher import Outgoing, Publisher, Unroutable
from .transport import CONNECTION_ERRORS, ENV_OPTIONS, AMQPTransport, connect, describe

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

    from machinery.plugin import Config

__all__ = ["AMQPBroker"]

log = logging.getLogger("machinery.amqp")

#: ``basic.qos`` is this times the consume's ``prefetch`` (the worker's concurrency) unless
#: ``amqp.prefetch_count`` is set: with no more unacknowledged messages than task slots, every
#: slot would wait a round trip (ack, then the next delivery) between tasks. The extra ones wait
#: unacknowledged in the subscription's inbox (redelivered if the worker dies, given back on
#: stop); Dramatiq's default is 2, Celery's 4.
QOS_MULTIPLIER = 4


@dataclass(frozen=True)
class _QueueSpec:
    """A queue to declare (and bind) before publishing to it or consuming from it."""

    name: str
    binding_key: str | None
    durable: bool = True
    auto_delete: bool = False
    arguments: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class _Tag:
    consumer: _Consumer
    generation: int
    delivery_tag: int


class _Declarer:
    """Declarations and queue inspection on one lock-protected blocking connection."""

    def __init__(self, broker: AMQPBroker) -> None:
        self._b = broker
        self._lock = threading.Lock()
        self._conn: BlockingConnection | None = None
        self._ch: BlockingChannel | None = None
        self._declared: set[_QueueSpec] = set()

    def _channel(self) -> BlockingChannel:
        if self._conn is None or not self._conn.is_open:
            self._declared.clear()
            self._conn = connect(self._b._params)
            self._ch = None
        if self._ch is None or not self._ch.is_open:
            self._ch = self._conn.channel()
        return self._ch

    def run(self, fn: Any, what: str) -> Any:
        """Call ``fn(channel)`` under the lock, reconnecting once on a dropped connection."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    return fn(self._channel())
                except pex.ChannelClosedByBroker as exc:
                    self._ch = None
                    if exc.reply_code == 404:
                        raise LookupError(exc.reply_text) from None
                    raise BrokerError(f"RabbitMQ refused to {what}: {exc.reply_text}") from exc
                except (pex.ProbableAuthenticationError, pex.ProbableAccessDeniedError) as exc:
                    raise BrokerAuthenticationError(
                        f"RabbitMQ at {describe(self._b._params)} refused the credentials: {exc!r}"
                    ) from exc
                except CONNECTION_ERRORS as exc:
                    self._conn = None
                    if attempt == 2:
                        raise BrokerConnectionError(
                            f"cannot {what}: RabbitMQ at {describe(self._b._params)} unreachable ({exc!r})"
                        ) from exc
        raise AssertionError("unreachable")

    def declare(self, specs: Sequence[_QueueSpec], *, force: bool = False) -> None:
        """Declare the exchange and each queue (with its binding) not declared yet."""

        def go(ch: BlockingChannel) -> None:
            for spec in specs:
                if not force and spec in self._declared:
                    continue
                self._b._declare_on(ch, spec)
                self._declared.add(spec)

        if force or any(s not in self._declared for s in specs):
            self.run(go, f"declare queue {specs[0].name!r}")

    def forget(self, specs: Sequence[_QueueSpec]) -> None:
        with self._lock:
            self._declared.difference_update(specs)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._conn.is_open:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001
                    pass
            self._conn = None


class _Consumer:
    """One subscription (:meth:`AMQPBroker._subscribe`): a connection and channel serviced by
    their own I/O thread, delivering into the core's inbox."""

    def __init__(self, broker: AMQPBroker, queue: str, prefetch: int, inbox: Inbox) -> None:
        self.b = broker
        self.queue = queue
        self.prefetch = prefetch
        self.inbox = inbox
        self.lock = threading.Lock()
        self.generation = 0
        self.outstanding: set[tuple[int, int]] = set()
        #: Settlements queued by task threads for the I/O thread (under ``lock``), and whether
        #: a wake-up to run them is already scheduled.
        self.queued: list[tuple[_Tag, str, Any]] = []
        self.flush_scheduled = False
        #: I/O thread only: delivery tags of the current channel not settled on it yet (what a
        #: ``multiple`` acknowledgement must not cover).
        self.unsettled: set[int] = set()
        self.closing = threading.Event()
        self.done = threading.Event()
        self.fatal: BaseException | None = None
        self.conn: BlockingConnection | None = None
        self.ch: BlockingChannel | None = None
        self.thread = threading.Thread(target=self._run, name=f"machinery-amqp-consumer-{queue}", daemon=True)

    # -- I/O thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.2
        try:
            while not self.closing.is_set() and not self.b._closed:
                try:
                    self._open()
                    backoff = 0.2
                    self._serve()
                    return
                except pex.ChannelClosedByBroker as exc:
                    self.fatal = BrokerError(f"RabbitMQ refused to consume queue {self.queue!r}: {exc.reply_text}")
                    self.inbox.fail(self.fatal)
                    return
                except (pex.ProbableAuthenticationError, pex.ProbableAccessDeniedError) as exc:
                    self.fatal = BrokerAuthenticationError(
                        f"RabbitMQ at {describe(self.b._params)} refused the credentials: {exc!r}"
                    )
                    self.inbox.fail(self.fatal)
                    return
                except Exception as exc:  # this thread must not die while consuming
                    # beside lost connections, e.g. pika's ValueError("Timeout closed before
                    # call") from a connection that closed inside a callback: reconnect either way
                    self._lost(exc)
                    if self.closing.is_set() or self.b._closed:
                        return
                    expected = isinstance(exc, (*CONNECTION_ERRORS, pex.ChannelClosed))
                    log.warning(
                        "consumer of %r: %s (%r); reconnecting in %.1fs",
                        self.queue,
                        "connection to RabbitMQ lost or refused" if expected else "unexpected error on its connection",
                        exc,
                        backoff,
                        exc_info=not expected,
                    )
                self.closing.wait(backoff)
                backoff = min(backoff * 2, self.b.options.reconnect_max_delay or 1.0)
        except BaseException as exc:
            # never end silently: the core waits on the inbox, and re-subscribes when it fails
            if self.fatal is None and not self.closing.is_set():
                self.inbox.fail(BrokerConnectionError(f"the consumer of {self.queue!r} stopped: {exc!r}"))
            raise
        finally:
            conn, self.conn, self.ch = self.conn, None, None
            if conn is not None and conn.is_open:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
            self.done.set()

    def _open(self) -> None:
        conn = connect(self.b._params)
        try:
            ch = conn.channel()
            self.b._declare_on(ch, self.b._consume_spec(self.queue))
            ch.basic_qos(prefetch_count=self.b.options.prefetch_count or self.prefetch * QOS_MULTIPLIER)
            gen = self.generation
            ch.basic_consume(self.queue, partial(self._on_message, gen), auto_ack=False)
        except BaseException:
            if conn.is_open:
                conn.close()
            raise
        self.unsettled = set()
        self.conn, self.ch = conn, ch
        log.debug("consuming %r on %s", self.queue, describe(self.b._params))

    def _on_message(self, gen: int, _ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        attrs = {
            "exchange": method.exchange,
            "routing_key": method.routing_key,
            "headers": props.headers or {},
            "priority": props.priority or 0,
        }
        tag = _Tag(self, gen, method.delivery_tag)
        if gen == self.generation:
            self.unsettled.add(method.delivery_tag)
        d = Delivery(body=body, queue=self.queue, tag=tag, redelivered=method.redelivered, attributes=attrs)
        self.inbox.put(d)

    def _serve(self) -> None:
        cancelled = False
        assert self.conn is not None and self.ch is not None
        while not self.b._closed:
            if not self.conn.is_open:
                # closed inside a callback (a settlement that met a dead socket swallows the
                # error): pika's process_data_events would fail with a ValueError now
                raise pex.ConnectionWrongStateError("the consumer's connection closed")
            if self.closing.is_set():
                if not cancelled:
                    for ctag in list(self.ch.consumer_tags):
                        self.ch.basic_cancel(ctag)
                    cancelled = True
                self._requeue_late()
                with self.lock:
                    if not self.outstanding:
                        return
            self.conn.process_data_events(time_limit=0.25)

    def _requeue_late(self) -> None:
        """After the cancel, requeue what still arrives in the inbox (the core no longer reads
        it once it cancelled the subscription)."""
        for d in self.inbox.drain():
            tag: _Tag = d.tag
            if tag.generation == self.generation and self.ch is not None and self.ch.is_open:
                self.ch.basic_nack(tag.delivery_tag, requeue=True)
                self.unsettled.discard(tag.delivery_tag)

    def _lost(self, exc: BaseException) -> None:
        with self.lock:
            lost = len(self.outstanding)
            self.outstanding.clear()
            self.generation += 1
            # the wake-up scheduled on the closed connection never comes: drop what it would
            # have settled (redelivered) and let the next settlement schedule one again
            self.queued.clear()
            self.flush_scheduled = False
        self.inbox.drain()  # their channel is gone: RabbitMQ delivers them again
        conn, self.conn, self.ch = self.conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        if lost:
            log.warning(
                "lost the connection with %d task(s) of %r in flight: their acknowledgements cannot be sent, "
                "so RabbitMQ will deliver them again",
                lost,
                self.queue,
            )

    def _settle(self, tag: _Tag, what: str, fn: Any) -> None:
        try:
            ch = self.ch
            if tag.generation != self.generation or ch is None or not ch.is_open:
                log.warning("cannot %s a message of %r: its connection is gone; it is redelivered", what, self.queue)
            else:
                fn(ch)
                self.unsettled.discard(tag.delivery_tag)
        except Exception as exc:  # noqa: BLE001 - never break the I/O loop
            log.warning("cannot %s a message of %r (%r); RabbitMQ redelivers it", what, self.queue, exc)
        finally:
            with self.lock:
                self.outstanding.discard((tag.generation, tag.delivery_tag))

    def _flush_settlements(self) -> None:
        """Run the settlements queued since the last wake-up (I/O thread): rejections one by
        one, then the acknowledgements, those below the lowest tag still unsettled as one
        ``basic.ack`` with ``multiple``, the others one by one."""
        with self.lock:
            batch, self.queued = self.queued, []
            self.flush_scheduled = False
        acks: list[_Tag] = []
        for tag, what, fn in batch:
            if fn is None and tag.generation == self.generation:
                acks.append(tag)
            else:
                self._settle(tag, what, fn or _ack_one(tag.delivery_tag))
        if not acks:
            return
        done = {t.delivery_tag for t in acks}
        pending = self.unsettled - done
        low = min(pending) if pending else math.inf
        below = [n for n in done if n < low]
        ch = self.ch
        try:
            if ch is None or not ch.is_open:
                log.warning(
                    "cannot acknowledge %d message(s) of %r: the connection is gone; they are redelivered",
                    len(acks),
                    self.queue,
                )
                return
            if below:
                ch.basic_ack(max(below), multiple=True)
                self.unsettled.difference_update(below)
            for n in sorted(done.difference(below)):
                ch.basic_ack(n)
                self.unsettled.discard(n)
        except Exception as exc:  # noqa: BLE001 - never break the I/O loop
            log.warning("cannot acknowledge messages of %r (%r); RabbitMQ redelivers them", self.queue, exc)
        finally:
            with self.lock:
                self.outstanding.difference_update((t.generation, t.delivery_tag) for t in acks)

    # -- caller side ------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop consuming: the I/O thread cancels the consumer, and closes the connection once
        the messages handed out are settled (what arrives meanwhile is redelivered)."""
        self.closing.set()

    def take(self, delivery: Delivery) -> bool:
        tag: _Tag = delivery.tag
        with self.lock:
            if tag.generation != self.generation:
                return False
            self.outstanding.add((tag.generation, tag.delivery_tag))
            return True

    def settle(self, tag: _Tag, what: str, fn: Any) -> None:
        """Run ``fn(channel)`` in the I/O thread (any thread may call this); ``fn`` None is an
        acknowledgement. Settlements queued before the I/O thread wakes up share its wake-up."""
        conn = self.conn
        if conn is None or tag.generation != self.generation:
            self._settle(tag, what, fn or _ack_one(tag.delivery_tag))
            return
        with self.lock:
            self.queued.append((tag, what, fn))
            wake, self.flush_scheduled = not self.flush_scheduled, True
        if not wake:
            return
        try:
            conn.add_callback_threadsafe(self._flush_settlements)
        except Exception:  # noqa: BLE001 - connection closed meanwhile: nothing can be sent
            with self.lock:
                batch, self.queued = self.queued, []
                self.flush_scheduled = False
            for t, w, f in batch:
                self._settle(t, w, f or _ack_one(t.delivery_tag))


def _ack_one(delivery_tag: int) -> Any:
    return lambda ch: ch.basic_ack(delivery_tag)


def _nack(delivery_tag: int, requeue: bool, ch: BlockingChannel) -> None:
    ch.basic_nack(delivery_tag, requeue=requeue)


def _amqp_value(v: Any) -> Any:
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, dict):
        return _amqp_table(v)
    if isinstance(v, (list, tuple)):
        return [_amqp_value(x) for x in v]
    # pika's table encoder has no float (Go's would write a double); the JSON body keeps the
    # exact value, the AMQP header carries its text.
    return str(v)


def _amqp_table(headers: dict[str, Any]) -> dict[str, Any]:
    """Signature headers as an AMQP field table pika can encode."""
    return {str(k): _amqp_value(v) for k, v in headers.items()}


class AMQPBroker(PushBroker):
    """RabbitMQ broker: Go Machinery's exchange, queue, binding and delay-queue declarations.

    :param url: ``amqp://user:pass@host:port/vhost`` or ``amqps://...``; several URLs joined by
        ``config.multiple_broker_separator`` are tried in order (failover).
    :param config: the core config; its ``amqp`` section is parsed into :class:`AMQPOptions`.
    """

    supports_native_delay: ClassVar[bool] = True
    #: False by default (Go declares task queues without ``x-max-priority``); an instance
    #: configured with ``max_priority`` or an ``x-max-priority`` declare argument sets it True.
    supports_priority: ClassVar[bool] = False
    supports_pending_listing: ClassVar[bool] = True
    supports_delayed_listing: ClassVar[bool] = False
    redelivers_unacked: ClassVar[bool] = True
    redelivery_timeout: ClassVar[float] = 10.0
    supports_purge: ClassVar[bool] = True
    config_section: ClassVar[str | None] = "amqp"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS
    #: Stop is noticed within 0.25 s.
    fetch_wait: ClassVar[float] = 0.25

    def __init__(self, url: str, config: Config, *, transport: AMQPTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport: the URLs and the ``amqp:`` section, parsed once.
        self.transport: AMQPTransport = AMQPTransport.attach(self, url, config, transport)
        self.options = self.transport.options
        self._params = self.transport.params_for("broker")
        self._publisher = Publisher(self._params)
        self._declarer = _Declarer(self)
        self._consumers: set[_Consumer] = set()
        self._closed = False
        if self.options.task_queue_args.get("x-max-priority"):
            self.supports_priority = True  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"AMQPBroker({redact_url(self.url)!r})"

    # -- routing (Go's AdjustRoutingKey and Publish) ----------------------------------------------

    def adjust_routing_key(self, signature: Signature) -> None:
        """Go's ``AdjustRoutingKey``: an empty routing key becomes the binding key for a direct
        exchange, else the default queue name."""
        if signature.routing_key:
            return
        signature.routing_key = self.options.binding_key if self.options.is_direct else self.default_queue

    def queue_for(self, signature: Signature) -> str:
        """The queue a signature lands in: for a direct exchange the binding key means the
        default queue and any other routing key a queue of that name; otherwise the default queue."""
        rk = signature.routing_key
        if self.options.is_direct and rk and rk != self.options.binding_key:
            return rk
        return self.default_queue

    def _task_spec(self, name: str, binding_key: str) -> _QueueSpec:
        return _QueueSpec(name, binding_key, arguments=tuple(sorted(self.options.task_queue_args.items())))

    def _consume_spec(self, queue: str) -> _QueueSpec:
        # The default queue is bound with the binding key (as Go's worker does); another queue
        # with its own name, which is the routing key a direct-exchange producer sends it.
        key = self.options.binding_key if queue == self.default_queue or not self.options.is_direct else queue
        return self._task_spec(queue, key)

    def _route_spec(self, signature: Signature) -> _QueueSpec:
        rk = signature.routing_key
        if self.options.is_direct and rk != self.options.binding_key:
            return self._task_spec(rk, rk)
        return self._task_spec(self.default_queue, self.options.binding_key)

    def _declare_on(self, ch: BlockingChannel, spec: _QueueSpec) -> None:
        o = self.options
        if o.exchange and spec.binding_key is not None:
            ch.exchange_declare(o.exchange, o.exchange_type, durable=True, auto_delete=False)
        ch.queue_declare(
            spec.name, durable=spec.durable, auto_delete=spec.auto_delete, arguments=dict(spec.arguments) or None
        )
        if spec.binding_key is not None and o.exchange:
            ch.queue_bind(spec.name, o.exchange, spec.binding_key, arguments=dict(o.queue_binding_args) or None)  # type: ignore[arg-type]

    # -- publishing -------------------------------------------------------------------------------

    def _properties(self, signature: Signature, expiration: str | None = None) -> pika.BasicProperties:
        return pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            headers=_amqp_table(signature.headers) if signature.headers else None,
            priority=signature.priority or None,  # Go's amqp091 leaves a 0 priority off the wire
            message_id=signature.uuid or None,
            expiration=expiration,
        )

    def _delay_plan(
        self, body: bytes, exchange: str, routing_key: str, delay_ms: int, props: pika.BasicProperties, uuid: str
    ) -> tuple[list[_QueueSpec], Outgoing]:
        if self.options.delayed_queue:
            # Go v2: one delay queue, per-message expiration (head-of-line blocking: see README).
            name = self.options.delayed_queue
            args: dict[str, Any] = {"x-dead-letter-exchange": exchange, "x-dead-letter-routing-key": routing_key}
            props.expiration = str(delay_ms)
        else:
            name = f"delay.{delay_ms}.{exchange}.{routing_key}"
            args = {
                "x-dead-letter-exchange": exchange,
                "x-dead-letter-routing-key": routing_key,
                "x-message-ttl": delay_ms,
                "x-expires": delay_ms * 2,
            }
        # Go's delay(): the delay queue is bound to the exchange with its own name as the key,
        # and the message goes through the exchange with that routing key, without a priority.
        # (Not through a fanout or headers exchange, which would also copy it into every task
        # queue at once: there the default exchange delivers it to the delay queue alone.)
        props.priority = None
        o = self.options
        via = o.exchange if o.exchange_type in ("direct", "topic") else ""
        spec = _QueueSpec(
            name, name if via else None, durable=True, auto_delete=o.auto_delete, arguments=tuple(args.items())
        )
        return [spec], Outgoing(via, name, body, props, uuid)

    def _plan(self, body: bytes, signature: Signature) -> tuple[list[_QueueSpec], Outgoing, bool]:
        target = self._route_spec(signature)
        props = self._properties(signature)
        eta = signature.eta
        if eta is not None:
            delay = (eta - datetime.now(timezone.utc)).total_seconds()
            if delay > 0:
                ms = max(1, math.ceil(delay * 1000))
                specs, out = self._delay_plan(
                    body, self.options.exchange, signature.routing_key, ms, props, signature.uuid
                )
                return [target, *specs], out, True
        return [target], Outgoing(self.options.exchange, signature.routing_key, body, props, signature.uuid), False

    def _publish_planned(self, plans: list[tuple[list[_QueueSpec], Outgoing, bool]]) -> None:
        if self._closed:
            raise BrokerError("the AMQP broker is closed")
        static = {s for specs, _, delayed in plans for s in (specs if not delayed else specs[:1])}
        delay_specs = list(dict.fromkeys(s for specs, _, delayed in plans if delayed for s in specs[1:]))
        if static:
            self._declarer.declare(list(static))
        if delay_specs:
            # Redeclared on every use, as Go does, to restart the queue's x-expires timer.
            self._declarer.declare(delay_specs, force=True)
        outs = [out for _, out, _ in plans]
        failed = self._publisher.publish(outs, self.options.confirm_timeout)
        if not failed:
            return
        retry: list[Outgoing] = []
        for it in failed:
            if isinstance(it.error, (Unroutable, BrokerConnectionError)):
                retry.append(it)
            else:
                assert it.error is not None
                raise it.error
        # A queue deleted behind our back, or a connection lost before the confirm: declare
        # again and publish once more (at-least-once: a lost confirm may mean a duplicate).
        log.warning("re-publishing %d message(s) after: %s", len(retry), retry[0].error)
        self._declarer.forget(list(static))
        self._declarer.declare(list(static | set(delay_specs)), force=True)
        again = self._publisher.publish([it.fresh() for it in retry], self.options.confirm_timeout)
        if again:
            err = again[0].error
            assert err is not None
            if isinstance(err, PublishError) and not err.task_uuid:
                err.task_uuid = again[0].task_uuid
            raise err

    def publish(self, body: bytes, signature: Signature) -> None:
        """Publish persistently with publisher confirms; returns once RabbitMQ confirmed.

        A future ETA goes to Go's per-delay queue ``delay.<ms>.<exchange>.<routing key>``,
        which dead-letters it into the task queue when its TTL expires.

        :raises PublishError: the broker nacked or returned it, or did not confirm in time.
        :raises BrokerConnectionError: RabbitMQ cannot be reached.
        """
        self._publish_planned([self._plan(body, signature)])

    def publish_many(self, items: Sequence[tuple[bytes, Signature]]) -> None:
        """Publish a batch: every message is sent, then all confirms are awaited together."""
        if items:
            self._publish_planned([self._plan(body, sig) for body, sig in items])

    # -- consuming (the core's push template) ----------------------------------------------------

    def _subscribe(self, queue: str, prefetch: int, inbox: Inbox) -> _Consumer:
        """Declare and bind ``queue`` as Go's worker does and ``basic_consume`` it on a
        connection of its own; ``basic.qos`` is ``amqp.prefetch_count`` or else
        :data:`QOS_MULTIPLIER` times ``prefetch``.
        Connection loss is handled inside with back-off; unacknowledged in-flight messages are
        then redelivered by RabbitMQ."""
        c = _Consumer(self, queue, max(1, prefetch), inbox)
        self._consumers = {x for x in self._consumers if not x.done.is_set()}
        self._consumers.add(c)
        c.thread.start()
        return c

    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        # A delivery from before a reconnect cannot be acknowledged: RabbitMQ redelivers it.
        return [d for d in super()._fetch(queue, max_n, wait) if d.tag.consumer.take(d)]

    def _ack(self, delivery: Delivery) -> None:
        """Acknowledge (in the consumer's I/O thread)."""
        tag: _Tag = delivery.tag
        tag.consumer.settle(tag, "acknowledge", None)

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        """Requeue (``basic.nack`` with requeue)."""
        for d in deliveries:
            tag: _Tag = d.tag
            tag.consumer.settle(tag, "reject", partial(_nack, tag.delivery_tag, True))

    def _dead_letter(self, delivery: Delivery) -> None:
        """Reject without requeue: the queue's DLX if configured, else dropped."""
        tag: _Tag = delivery.tag
        tag.consumer.settle(tag, "reject", partial(_nack, tag.delivery_tag, False))

    def _defer(self, delivery: Delivery, delay: float) -> None:
        """Republish through a delay queue and then acknowledge the original (publish-then-ack:
        at-least-once, never lost); requeue at once when the republish fails."""
        try:
            self._republish_delayed(delivery, delay)
        except Exception as exc:  # noqa: BLE001 - fall back to an immediate requeue
            log.warning("cannot delay a message of %r (%s); requeueing it now", delivery.queue, exc)
            self._release([delivery])
        else:
            self._ack(delivery)

    def _republish_delayed(self, delivery: Delivery, delay: float) -> None:
        attrs = delivery.attributes
        exchange = attrs.get("exchange", self.options.exchange)
        routing_key = attrs.get("routing_key") or delivery.queue
        try:
            uuid = decode_signature(delivery.body).uuid
        except DecodeError:
            uuid = ""
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            headers=attrs.get("headers") or None,
            priority=attrs.get("priority") or None,
            message_id=uuid or None,
        )
        specs, out = self._delay_plan(
            delivery.body, exchange, routing_key, max(1, math.ceil(delay * 1000)), props, uuid
        )
        self._declarer.declare(specs, force=True)
        failed = self._publisher.publish([out], self.options.confirm_timeout)
        if failed:
            assert failed[0].error is not None
            raise failed[0].error

    # -- inspection -------------------------------------------------------------------------------

    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        """Signatures waiting in ``queue``, oldest first (Go v2's ``GetPendingTasks``).

        Reads with ``basic.get`` on a private channel and gives every message back, so they
        are briefly invisible to consumers and come back marked redelivered.
        """
        name = queue or self.default_queue

        def go(ch: BlockingChannel) -> list[Signature]:
            peek = ch.connection.channel()
            out: list[Signature] = []
            try:
                count = peek.queue_declare(name, passive=True).method.message_count
                last = 0
                for _ in range(count):
                    method, _props, body = peek.basic_get(name, auto_ack=False)
                    if method is None:
                        break
                    last = method.delivery_tag
                    try:
                        out.append(decode_signature(body))
                    except DecodeError as exc:
                        log.warning("pending message in %r is not a signature: %s", name, exc.reason)
                if last:
                    peek.basic_nack(last, multiple=True, requeue=True)
            finally:
                if peek.is_open:
                    peek.close()
            return out

        try:
            result: list[Signature] = self._declarer.run(go, f"list queue {name!r}")
        except LookupError:
            return []
        return result

    def purge(self, queue: str | None = None) -> int:
        """Delete the waiting messages of ``queue``; returns how many."""
        name = queue or self.default_queue
        try:
            n: int = self._declarer.run(lambda ch: ch.queue_purge(name).method.message_count, f"purge {name!r}")
        except LookupError:
            return 0
        return n

    def delete_queue(self, queue: str) -> None:
        """Delete a queue and its messages (tests and tooling)."""
        try:
            self._declarer.run(lambda ch: ch.queue_delete(queue), f"delete {queue!r}")
        except LookupError:
            pass
        self._declarer.forget([s for s in list(self._declarer._declared) if s.name == queue])

    def close(self) -> None:
        """Close every connection; messages not acknowledged yet are redelivered. Idempotent."""
        if self._closed:
            return
        self._closed = True
        super().close()
        for c in list(self._consumers):
            c.closing.set()
        deadline = time.monotonic() + 2.0
        for c in list(self._consumers):
            c.done.wait(max(0.0, deadline - time.monotonic()))
        self._publisher.close()
        self._declarer.close()
        self.transport.release(self)
