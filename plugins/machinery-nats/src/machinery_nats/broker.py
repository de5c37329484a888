"""The NATS JetStream broker, written against the core's consume template.

One stream (``MACHINERY`` by default, work-queue retention) holds every queue: queue ``Q`` is
the subject ``<prefix>.q.Q`` and is read by a durable pull consumer of its own; messages
dropped to the dead letters go to ``<prefix>.dead.Q`` in the same stream, which no consumer
reads. A delivered message that is not acknowledged within ``ack_wait`` seconds is delivered
again; while a worker runs it, the template's heartbeat tells the server it is in progress.
JetStream (2.9) cannot hold a message until a time, so an ETA is met by the core: the
consumer gives the message back with a delayed ``NAK`` until it is due.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import nats.errors
import nats.js.errors
from nats.js import api

from machinery.plugin import (
    AsyncPollingBroker,
    BrokerConnectionError,
    ConfigError,
    DeadLetter,
    Delivery,
    PollingBroker,
    PublishError,
    Signature,
    decode_signature,
    eta_of,
    redact_url,
)
from machinery_nats import ENV_OPTIONS
from machinery_nats.transport import BAD_TOKEN, NatsOptions, NatsTransport

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from machinery.plugin import Config

__all__ = ["NatsBroker", "NatsOptions"]

log = logging.getLogger("machinery.nats")
T = TypeVar("T")


class NatsBroker(AsyncPollingBroker):
    """Broker on NATS JetStream: ``nats://[user:password@]host:4222[,host2:4222][?option=value]``.

    :param url: the ``nats://`` URL.
    :param config: the core configuration; options come from its ``nats:`` section.
    :raises ConfigError: a bad option.
    """

    supports_pending_listing: ClassVar[bool] = True
    supports_dead_letters: ClassVar[bool] = True
    redelivery_timeout: ClassVar[float] = NatsOptions.ack_wait
    config_section: ClassVar[str | None] = "nats"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = NatsTransport.connection_errors

    def __init__(self, url: str, config: Config, *, transport: NatsTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport: the options, and the loop and connection shared by brokers on this URL.
        self.transport: NatsTransport = NatsTransport.attach(self, url, config, transport)
        self.options = self.transport.options
        self.extend_interval = self.options.ack_wait / 3
        self.loop = self.transport.loop
        self._subs: dict[str, JetStreamContext.PullSubscription] = {}

    @property
    def lease(self) -> float:
        """Seconds before an unacknowledged message of a dead consumer comes back."""
        return self.options.ack_wait

    # -- names ------------------------------------------------------------------------------

    def subject(self, queue: str, kind: str = "q") -> str:
        """The subject of ``queue`` (``kind`` ``q``) or of its dead letters (``dead``)."""
        if not queue or BAD_TOKEN.search(queue):
            raise ConfigError("queue", f"{queue!r} cannot be a NATS subject (no spaces, '*', '>' or empty tokens)")
        return f"{self.options.subject_prefix}.{kind}.{queue}"

    def durable(self, queue: str) -> str:
        """The durable consumer reading ``queue`` (consumer names allow no ``.``)."""
        name = re.sub(r"[^A-Za-z0-9_-]", "_", queue)
        if name != queue:
            name += "_" + hashlib.sha1(queue.encode()).hexdigest()[:8]
        return f"{self.options.subject_prefix}_{name}"

    # -- connection (runs on the loop) ------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], what: str, timeout: float | None = None) -> T:
        self.transport.connection_for(self)  # used again after close(): hold the transport again
        return super()._call(coro, what, timeout)

    async def _sub(self, queue: str) -> JetStreamContext.PullSubscription:
        sub = self._subs.get(queue)
        if sub is None:
            js = await self.transport.jetstream()
            name, o = self.durable(queue), self.options
            try:
                await js.consumer_info(o.stream, name)
            except nats.js.errors.NotFoundError:
                cfg = api.ConsumerConfig(
                    durable_name=name,
                    filter_subject=self.subject(queue),
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=o.ack_wait,
                    max_deliver=-1,
                    max_ack_pending=o.max_ack_pending,
                )
                await js.add_consumer(o.stream, cfg)
            sub = self._subs[queue] = await js.pull_subscribe_bind(durable=name, stream=o.stream)
        return sub

    async def _unsubscribe(self) -> None:
        subs, self._subs = list(self._subs.values()), {}
        await asyncio.gather(*(sub.unsubscribe() for sub in subs), return_exceptions=True)

    def close(self) -> None:
        """Stop the template's threads and drop this broker's subscriptions; the last broker of
        the transport closes the connection and its loop."""
        PollingBroker.close(self)  # not AsyncPollingBroker.close: the loop is the transport's
        if self._subs and self.transport.is_open:
            try:
                self.loop.run(self._unsubscribe(), self.call_timeout)
            except Exception as exc:  # noqa: BLE001 - closing must not raise
                log.warning("NatsBroker: close failed: %s", exc)
        self.transport.release(self)

    def _reconnect(self) -> None:
        self._subs.clear()  # bound again on the next fetch (the consumer may have been lost)

    # -- publishing -------------------------------------------------------------------------

    async def _publish(self, items: Sequence[tuple[bytes, Signature]]) -> None:
        js = await self.transport.jetstream()
        subjects = [self.subject(self.queue_for(sig)) for _, sig in items]
        acks = await asyncio.gather(
            *(js.publish(s, body, stream=self.options.stream) for s, (body, _) in zip(subjects, items)),
            return_exceptions=True,
        )
        for ack, (_, sig) in zip(acks, items):
            if isinstance(ack, BaseException):
                if isinstance(ack, self.connection_errors):
                    raise BrokerConnectionError(f"NATS publish failed: {ack!r}") from ack
                raise PublishError(f"NATS did not accept task {sig.uuid}: {ack!r}", sig.uuid) from ack

    def publish(self, body: bytes, signature: Signature) -> None:
        """Publish to the queue's subject; returns once JetStream has stored it."""
        self._call(self._publish([(body, signature)]), "publish")

    def publish_many(self, items: Sequence[tuple[bytes, Signature]]) -> None:
        """Publish every message concurrently, each confirmed by JetStream."""
        if items:
            self._call(self._publish(items), "publish")

    # -- the template's primitives ----------------------------------------------------------

    async def _afetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        sub = await self._sub(queue)
        try:
            msgs = await sub.fetch(max_n, timeout=max(wait, 0.05))
        except nats.errors.TimeoutError:
            return []
        out = []
        for m in msgs:
            n = m.metadata.num_delivered
            d = Delivery(body=m.data, queue=queue, tag=m, redelivered=n > 1)
            if self.options.max_deliveries and n > self.options.max_deliveries:
                log.warning("message %s of %r delivered %d times: dead-lettered", m.metadata.sequence.stream, queue, n)
                await self._adead_letter(d)
                continue
            out.append(d)
        return out

    async def _aack(self, delivery: Delivery) -> None:
        await _msg(delivery).ack_sync(timeout=self.call_timeout)

    async def _arelease(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            await _msg(d).nak()

    async def _adefer(self, delivery: Delivery, delay: float) -> None:
        await _msg(delivery).nak(delay=delay)

    async def _aextend(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            await _msg(d).in_progress()

    async def _adead_letter(self, delivery: Delivery) -> None:
        js = await self.transport.jetstream()
        await js.publish(self.subject(delivery.queue, "dead"), delivery.body, stream=self.options.stream)
        await _msg(delivery).term()

    # -- inspection -------------------------------------------------------------------------

    async def _messages(self, subject: str, limit: int = 10000) -> list[api.RawStreamMsg]:
        js = await self.transport.jetstream()
        out: list[api.RawStreamMsg] = []
        seq = 1
        while len(out) < limit:
            try:
                m = await js.get_msg(self.options.stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            out.append(m)
            seq = (m.seq or seq) + 1
        return out

    async def _bodies(self, subject: str) -> list[bytes]:
        return [m.data or b"" for m in await self._messages(subject)]

    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        """Messages of ``queue`` not yet acknowledged (those waiting for an ETA left out), oldest
        first; this includes messages a worker holds right now."""
        import time

        bodies = self._call(self._bodies(self.subject(queue or self.default_queue)), "list pending")
        now = time.time()
        return [decode_signature(b) for b in bodies if (eta_of(b) or 0.0) <= now]

    def dead_letters(self, queue: str | None = None) -> list[bytes]:
        """Bodies dropped with ``nack(requeue=False)`` or past ``max_deliveries``, oldest first."""
        return self._call(self._bodies(self.subject(queue or self.default_queue, "dead")), "list dead letters")

    def list_dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """Dead letters of ``queue`` (of every queue with None), oldest first; the id is the
        message's stream sequence number."""
        subject = self.subject(queue, "dead") if queue else f"{self.options.subject_prefix}.dead.>"
        found = self._call(self._messages(subject), "list dead letters")
        cut = len(f"{self.options.subject_prefix}.dead.")
        return [DeadLetter(str(m.seq), (m.subject or "")[cut:], m.data or b"", m.time) for m in found]

    def remove_dead_letter(self, letter: DeadLetter) -> bool:
        """Delete one dead letter by its sequence number; False when it was already gone."""

        async def remove() -> bool:
            js = await self.transport.jetstream()
            try:
                return bool(await js.delete_msg(self.options.stream, int(letter.id)))
            except nats.js.errors.APIError as exc:  # 10043/10057: no message with that sequence
                if isinstance(exc, nats.js.errors.NotFoundError) or exc.err_code in (10043, 10057):
                    return False
                raise

        return bool(self._call(remove(), "remove a dead letter"))

    async def _purge(self, subject: str) -> int:
        js = await self.transport.jetstream()
        info = await js.stream_info(self.options.stream, subjects_filter=subject)
        await js.purge_stream(self.options.stream, subject=subject)
        return int((info.state.subjects or {}).get(subject, 0))

    def purge(self, queue: str | None = None) -> int:
        """Delete every message of ``queue`` (including those being worked on)."""
        return self._call(self._purge(self.subject(queue or self.default_queue)), "purge")

    def __repr__(self) -> str:
        return f"NatsBroker({redact_url(self.url)!r}, stream={self.options.stream!r})"


def _msg(delivery: Delivery) -> Msg:
    return cast("Msg", delivery.tag)
