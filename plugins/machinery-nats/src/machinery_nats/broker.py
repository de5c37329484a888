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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from machinery.plugin import (
    AsyncPollingBroker,
    BrokerConnectionError,
    ConfigError,
    DeadLetter,
    Delivery,
    PublishError,
    Signature,
    decode_signature,
    eta_of,
    parse_options,
    redact_url,
)
from machinery_nats import ENV_OPTIONS

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from machinery.plugin import Config

__all__ = ["NatsBroker", "NatsOptions"]

log = logging.getLogger("machinery.nats")

_BAD_TOKEN = re.compile(r"[\s*>]|^\.|\.$|\.\.")


@dataclass(frozen=True)
class NatsOptions:
    """Options of the ``nats:`` section (or the URL's query string, which overrides it).

    :param stream: the JetStream stream holding every queue (created when missing).
    :param subject_prefix: first token of the subjects (``<prefix>.q.<queue>``).
    :param ack_wait: seconds before an unacknowledged message is delivered again (the
        redelivery timeout after a worker dies).
    :param max_deliveries: a message delivered more than this many times goes to the dead
        letters instead (0: no limit). Every delivery counts, including the core's delayed
        give-backs for an ETA and for unknown task names.
    :param max_ack_pending: most messages of one queue delivered and not yet acknowledged.
    :param storage: ``file`` or ``memory`` (when the stream is created).
    :param replicas: stream replicas (when it is created).
    :param connect_timeout: seconds to connect.
    """

    stream: str = "MACHINERY"
    subject_prefix: str = "machinery"
    ack_wait: float = 30.0
    max_deliveries: int = 0
    max_ack_pending: int = 20000
    storage: str = "file"
    replicas: int = 1
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.stream):
            raise ConfigError("nats.stream", f"not a stream name: {self.stream!r}")
        if _BAD_TOKEN.search(self.subject_prefix) or not self.subject_prefix:
            raise ConfigError("nats.subject_prefix", f"not a subject prefix: {self.subject_prefix!r}")
        if self.ack_wait <= 0:
            raise ConfigError("nats.ack_wait", "must be > 0")
        if self.max_deliveries < 0:
            raise ConfigError("nats.max_deliveries", "must be >= 0")
        if self.storage not in ("file", "memory"):
            raise ConfigError("nats.storage", "must be file or memory")


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
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = (
        nats.errors.ConnectionClosedError,
        nats.errors.NoServersError,
        nats.errors.TimeoutError,
        nats.errors.StaleConnectionError,
        nats.errors.OutboundBufferLimitError,
        nats.js.errors.ServiceUnavailableError,
        OSError,
    )

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        parts = urlsplit(url)
        self.options = parse_options(NatsOptions, "nats", config.section("nats"), dict(parse_qsl(parts.query)))
        self.extend_interval = self.options.ack_wait / 3
        netloc = parts.netloc.rpartition("@")
        self._servers = [f"{parts.scheme}://{h}" for h in netloc[2].split(",")]
        user, _, password = netloc[0].partition(":")
        self._auth = {"user": unquote(user), "password": unquote(password)} if user else {}
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._subs: dict[str, JetStreamContext.PullSubscription] = {}
        self._stream_ready = False

    @property
    def lease(self) -> float:
        """Seconds before an unacknowledged message of a dead consumer comes back."""
        return self.options.ack_wait

    # -- names ------------------------------------------------------------------------------

    def subject(self, queue: str, kind: str = "q") -> str:
        """The subject of ``queue`` (``kind`` ``q``) or of its dead letters (``dead``)."""
        if not queue or _BAD_TOKEN.search(queue):
            raise ConfigError("queue", f"{queue!r} cannot be a NATS subject (no spaces, '*', '>' or empty tokens)")
        return f"{self.options.subject_prefix}.{kind}.{queue}"

    def durable(self, queue: str) -> str:
        """The durable consumer reading ``queue`` (consumer names allow no ``.``)."""
        name = re.sub(r"[^A-Za-z0-9_-]", "_", queue)
        if name != queue:
            name += "_" + hashlib.sha1(queue.encode()).hexdigest()[:8]
        return f"{self.options.subject_prefix}_{name}"

    # -- connection (runs on the loop) ------------------------------------------------------

    async def _jetstream(self) -> JetStreamContext:
        if self._js is None or self._nc is None or self._nc.is_closed:
            self._nc = await nats.connect(
                self._servers,
                connect_timeout=self.options.connect_timeout,
                max_reconnect_attempts=-1,
                **self._auth,
            )
            self._js = self._nc.jetstream()
            self._subs.clear()
        if not self._stream_ready:
            await self._ensure_stream(self._js)
        return self._js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        o = self.options
        try:
            await js.stream_info(o.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                name=o.stream,
                subjects=[f"{o.subject_prefix}.q.>", f"{o.subject_prefix}.dead.>"],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE if o.storage == "file" else api.StorageType.MEMORY,
                num_replicas=o.replicas,
            )
        self._stream_ready = True

    async def _sub(self, queue: str) -> JetStreamContext.PullSubscription:
        sub = self._subs.get(queue)
        if sub is None:
            js = await self._jetstream()
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

    async def _aclose(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self._subs.clear()
        if nc is not None and not nc.is_closed:
            await nc.close()

    def _reconnect(self) -> None:
        self._subs.clear()  # bound again on the next fetch (the consumer may have been lost)

    # -- publishing -------------------------------------------------------------------------

    async def _publish(self, items: Sequence[tuple[bytes, Signature]]) -> None:
        js = await self._jetstream()
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
        js = await self._jetstream()
        await js.publish(self.subject(delivery.queue, "dead"), delivery.body, stream=self.options.stream)
        await _msg(delivery).term()

    # -- inspection -------------------------------------------------------------------------

    async def _messages(self, subject: str, limit: int = 10000) -> list[api.RawStreamMsg]:
        js = await self._jetstream()
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
            js = await self._jetstream()
            try:
                return bool(await js.delete_msg(self.options.stream, int(letter.id)))
            except nats.js.errors.APIError as exc:  # 10043/10057: no message with that sequence
                if isinstance(exc, nats.js.errors.NotFoundError) or exc.err_code in (10043, 10057):
                    return False
                raise

        return bool(self._call(remove(), "remove a dead letter"))

    async def _purge(self, subject: str) -> int:
        js = await self._jetstream()
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
