"""The Google Cloud Pub/Sub broker: ``gcppubsub://PROJECT_ID/SUBSCRIPTION_NAME``.

Layout, as in Go Machinery: a queue is a **topic** named after the queue (``default_queue`` or
the signature's routing key) and the URL's subscription reads the default queue's topic. Go's
worker reads only that subscription; here any queue can be consumed, through a subscription
derived from the URL's: ``<subscription>-<queue>`` (or the name given in the ``subscriptions``
option). Message data is the signature JSON and, as in Go, no attributes are set, so Go and
Python producers and workers can share topics and subscriptions.

Consuming is the core's consume template (:class:`~machinery.plugin.PollingBroker`) over
synchronous ``Pull`` with a short ``timeout`` (so ``stop`` is noticed within a second, or
``pull_timeout`` if shorter), asking for at most ``prefetch`` minus the messages this consumer
already holds, so a worker never leases more than its concurrency. The template's heartbeat
extends the ack deadline of every held message with ``ModifyAckDeadline`` until the worker
acknowledges it (after the final state is stored) or gives it back; a worker killed mid-task
stops extending, so the message is redelivered when its deadline runs out.

Pub/Sub has no delayed delivery, so the broker declares ``supports_native_delay = False``: the
consumer hands out no message before its ETA. One due within a second is kept until due; a
later one is given back with its ack deadline set to ``min(ETA - now, 600)`` seconds, so Pub/Sub
redelivers it then (and again while it is still early). Nothing is republished.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from google.api_core import exceptions as gexc
from google.protobuf.duration_pb2 import Duration
from google.pubsub_v1 import PublisherClient
from google.pubsub_v1.types import DeadLetterPolicy, PubsubMessage, ReceivedMessage

from machinery.plugin import (
    BrokerConnectionError,
    BrokerError,
    ConfigError,
    Delivery,
    PollingBroker,
    PublishError,
    redact_url,
)
from machinery_gcp.transport import (
    MAX_ACK_DEADLINE,
    MIN_ACK_DEADLINE,
    GCPPubSubError,
    GCPPubSubOptions,
    GCPPubSubTransport,
    check_id,
    parse_url,
    translate,
)

if TYPE_CHECKING:
    from machinery.plugin import Config, Signature

__all__ = ["GCPPubSubBroker", "GCPPubSubError", "GCPPubSubOptions", "parse_url"]

log = logging.getLogger("machinery.broker.gcppubsub")

T = TypeVar("T")

#: Messages per Publish / Acknowledge / ModifyAckDeadline request.
MAX_BATCH = 1000
MAX_PUBLISH_BYTES = 9 * 1024 * 1024


@dataclass(eq=False)
class _Tag:
    """Delivery tag: what ack/nack need to find the message again, and its lease (changed only
    by the heartbeat, which never runs at the same time as a settle of the message)."""

    ack_id: str
    subscription: str
    topic: str
    ordering_key: str
    started: float  # monotonic time of the pull that delivered it
    length: float  # length of the current deadline, for the extension margin
    expires: float = 0.0  # monotonic time its current ack deadline runs out (conservative)
    extend: bool = True  # False once held longer than max_extension

    def __post_init__(self) -> None:
        self.expires = self.started + self.length


@dataclass
class _QueueInfo:
    topic: str
    subscription: str
    ack_deadline: int


class GCPPubSubBroker(PollingBroker):
    """Google Cloud Pub/Sub broker (Go's ``gcppubsub`` broker).

    :param url: ``gcppubsub://PROJECT_ID/SUBSCRIPTION_NAME``; options may follow as a query
        string (``?create_missing=true``), overriding the ``gcp_pubsub`` section.
    :param config: the core config; ``config.section("gcp_pubsub")`` is parsed into
        :class:`GCPPubSubOptions`.
    """

    supports_native_delay: ClassVar[bool] = False
    supports_priority: ClassVar[bool] = False
    supports_pending_listing: ClassVar[bool] = False
    supports_delayed_listing: ClassVar[bool] = False
    redelivers_unacked: ClassVar[bool] = True
    #: The default ``ack_deadline`` (60 s) plus the heartbeat's margin.
    redelivery_timeout: ClassVar[float] = 75.0
    supports_purge: ClassVar[bool] = True
    config_section: ClassVar[str | None] = "gcp_pubsub"
    #: Go Machinery reads no environment variables for Pub/Sub (``PUBSUB_EMULATOR_HOST`` and
    #: ``GOOGLE_APPLICATION_CREDENTIALS`` are read by the client library itself).
    env_options: ClassVar[dict[str, str]] = {}
    fetch_max: ClassVar[int] = MAX_BATCH

    def __init__(self, url: str, config: Config, *, transport: GCPPubSubTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport: the URL and options parsed once, the clients shared by brokers on this URL.
        self.transport: GCPPubSubTransport = GCPPubSubTransport.attach(self, url, config, transport)
        self.project, self.subscription = self.transport.project, self.transport.subscription
        self.options: GCPPubSubOptions = self.transport.options
        self._queues: dict[str, _QueueInfo] = {}
        self._published_to: set[str] = set()
        self._closed = False
        #: The template's heartbeat looks every second for leases about to run out.
        self.extend_interval = 1.0

    # -- names ----------------------------------------------------------------------------------

    def topic_path(self, queue: str) -> str:
        """The topic of a queue: ``projects/<project>/topics/<queue>``."""
        return f"projects/{self.project}/topics/{check_id(queue, f'queue {queue!r}', 'topic')}"

    def subscription_path(self, queue: str) -> str:
        """The subscription a worker of ``queue`` reads.

        ``subscriptions[queue]`` when configured; the URL's subscription for the default queue
        (as Go does); ``<url subscription>-<queue>`` for any other queue.
        """
        name = self.options.subscriptions.get(queue)
        if name is None:
            name = self.subscription if queue == self.default_queue else f"{self.subscription}-{queue}"
        check_id(name, f"subscription of queue {queue!r}", "subscription")
        return f"projects/{self.project}/subscriptions/{name}"

    # -- clients ----------------------------------------------------------------------------------

    def _pub(self) -> Any:
        self._check_open()
        return self.transport.connection.publisher

    def _sub(self) -> Any:
        self._check_open()
        return self.transport.connection.subscriber

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError(f"the Pub/Sub broker for {redact_url(self.url)} is closed")

    def _call(self, what: str, resource: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """One API call through the transport (retried, errors translated)."""
        return self.transport.call(what, resource, fn, **kwargs)

    # -- topics and subscriptions -----------------------------------------------------------------

    def _queue(self, queue: str) -> _QueueInfo:
        """Check (or create) a queue's topic and subscription, once per broker."""
        info = self._queues.get(queue)
        if info is not None:
            return info
        topic, sub = self.topic_path(queue), self.subscription_path(queue)
        if self.options.create_missing:
            self._create_topic(topic)
            if self.options.dead_letter_topic:
                dead = self.options.dead_letter_topic
                self._create_topic(f"projects/{self.project}/topics/{dead}")
                # A topic without a subscription drops what it receives: keep the letters.
                self._create_subscription(
                    f"projects/{self.project}/subscriptions/{dead}", f"projects/{self.project}/topics/{dead}"
                )
            self._create_subscription(sub, topic)
        found = self._call("subscription", sub, self._sub().get_subscription, subscription=sub)
        if found.topic != topic:
            raise GCPPubSubError(
                f"Pub/Sub subscription {sub} reads topic {found.topic or '(deleted)'}, "
                f"not {topic} of queue {queue!r}; use another subscription "
                "(gcp_pubsub.subscriptions) or another queue name",
                resource=sub,
                code="FAILED_PRECONDITION",
            )
        info = _QueueInfo(topic, sub, found.ack_deadline_seconds or MIN_ACK_DEADLINE)
        self._queues[queue] = info
        return info

    def _forget(self, queue: str) -> None:
        """Drop what this broker remembers of ``queue``'s topic and subscription, after Pub/Sub said
        one of them does not exist: the next use checks them again (and, with ``create_missing``,
        creates them), instead of failing for ever on a cached answer."""
        self._queues.pop(queue, None)
        self._published_to.discard(queue)

    def _create_topic(self, topic: str) -> None:
        request: dict[str, Any] = {"name": topic}
        if self.options.topic_retention:
            request["message_retention_duration"] = Duration(seconds=self.options.topic_retention)
        try:
            self._call("create topic", topic, self._pub().create_topic, request=request)
            log.info("created Pub/Sub topic %s", topic)
        except GCPPubSubError as exc:
            if exc.code != "ALREADY_EXISTS":
                raise

    def _create_subscription(self, sub: str, topic: str) -> None:
        o = self.options
        request: dict[str, Any] = {"name": sub, "topic": topic, "ack_deadline_seconds": o.ack_deadline}
        if o.ordering:
            request["enable_message_ordering"] = True
        if o.max_delivery_attempts and not sub.endswith(f"/{o.dead_letter_topic}"):
            request["dead_letter_policy"] = DeadLetterPolicy(
                dead_letter_topic=f"projects/{self.project}/topics/{o.dead_letter_topic}",
                max_delivery_attempts=o.max_delivery_attempts,
            )
        try:
            self._call("create subscription", sub, self._sub().create_subscription, request=request)
            log.info("created Pub/Sub subscription %s on %s", sub, topic)
        except GCPPubSubError as exc:
            if exc.code != "ALREADY_EXISTS":
                raise

    def ensure_queue(self, queue: str | None = None) -> None:
        """Check that a queue's topic and subscription exist, creating them when
        ``create_missing`` is on.

        :raises GCPPubSubError: one is missing (naming it) or the subscription reads another topic.
        """
        self._queue(queue or self.default_queue)

    # -- publishing -------------------------------------------------------------------------------

    def _message(self, body: bytes, signature: Signature, queue: str) -> PubsubMessage:
        if self.options.ordering:
            key = signature.broker_message_group_id or self.options.ordering_key or queue
            return PubsubMessage(data=body, ordering_key=key)
        return PubsubMessage(data=body)

    def _prepare(self, queue: str) -> str:
        if queue not in self._published_to:
            if self.options.create_missing:
                # The subscription must exist before the first message, or Pub/Sub drops it.
                self._queue(queue)
            self._published_to.add(queue)
        return self.topic_path(queue)

    def publish(self, body: bytes, signature: Signature) -> None:
        """Publish the signature JSON to the topic named by its routing key; returns once
        Pub/Sub has stored it.

        :raises PublishError: the topic is missing or refused the message (naming the topic).
        """
        queue = self.queue_for(signature)
        self._publish_batch(queue, [self._message(body, signature, queue)], [signature.uuid])

    def publish_many(self, items: Sequence[tuple[bytes, Signature]]) -> None:
        """Publish several messages, one ``Publish`` request per topic and 1,000 messages."""
        by_queue: dict[str, tuple[list[PubsubMessage], list[str]]] = {}
        for body, sig in items:
            queue = self.queue_for(sig)
            msgs, uuids = by_queue.setdefault(queue, ([], []))
            msgs.append(self._message(body, sig, queue))
            uuids.append(sig.uuid)
        for queue, (msgs, uuids) in by_queue.items():
            start, size = 0, 0
            for i, m in enumerate(msgs):
                size += len(m.data) + 64
                if i - start >= MAX_BATCH or (size > MAX_PUBLISH_BYTES and i > start):
                    self._publish_batch(queue, msgs[start:i], uuids[start:i])
                    start, size = i, len(m.data) + 64
            self._publish_batch(queue, msgs[start:], uuids[start:])

    def _publish_batch(self, queue: str, messages: list[PubsubMessage], uuids: list[str]) -> None:
        if not messages:
            return
        try:
            topic = self._prepare(queue)
            client = self._pub()
            # The GAPIC method: one synchronous request, even on a google.cloud.pubsub_v1
            # PublisherClient, whose own publish() batches in a background thread.
            self._call(
                "publish to topic",
                topic,
                PublisherClient.publish,
                self=client,
                topic=topic,
                messages=messages,
            )
        except (BrokerError, ConfigError) as exc:
            if isinstance(exc, GCPPubSubError) and exc.code == "NOT_FOUND":
                self._forget(queue)
            raise PublishError(f"{len(messages)} message(s) not published: {exc}", uuids[0]) from exc

    # -- consuming (the core's consume template) --------------------------------------------------

    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        """One synchronous ``Pull`` of up to ``max_n`` messages (and ``max_messages``), waiting
        at most ``wait`` seconds (and ``pull_timeout``)."""
        info = self._queue(queue)
        room = min(max_n, self.options.max_messages) if self.options.max_messages else max_n
        timeout = max(0.05, min(wait, self.options.pull_timeout))
        started = time.monotonic()
        try:
            resp = self._sub().pull(
                subscription=info.subscription, max_messages=min(room, MAX_BATCH), timeout=timeout, retry=None
            )
        except gexc.DeadlineExceeded:
            return []
        except (gexc.ServiceUnavailable, gexc.InternalServerError, gexc.Aborted, gexc.Unknown) as exc:
            raise BrokerConnectionError(f"Pub/Sub pull from {info.subscription} failed: {exc}") from exc
        except gexc.GoogleAPICallError as exc:
            if isinstance(exc, gexc.NotFound):
                self._forget(queue)  # deleted (or an emulator restarted): check again next time
            raise translate(exc, "pull from subscription", info.subscription) from exc
        received = list(resp.received_messages)
        if not received and time.monotonic() - started < 0.05:  # a server that answers empty at once
            time.sleep(min(0.05, wait))
        return [self._delivery(rm, info, started) for rm in received]

    @staticmethod
    def _delivery(rm: ReceivedMessage, info: _QueueInfo, started: float) -> Delivery:
        msg = rm.message
        tag = _Tag(rm.ack_id, info.subscription, info.topic, msg.ordering_key, started, info.ack_deadline)
        attempt = rm.delivery_attempt
        attrs: dict[str, Any] = dict(msg.attributes)
        attrs.update(
            message_id=msg.message_id,
            publish_time=msg.publish_time,
            delivery_attempt=attempt,
            ordering_key=msg.ordering_key,
            subscription=tag.subscription,
        )
        return Delivery(body=msg.data, queue=_queue_of(tag.topic), tag=tag, redelivered=attempt > 1, attributes=attrs)

    def _ordering_key(self, delivery: Delivery) -> str:
        """With ``ordering``, messages of one key run one at a time, in order."""
        tag: _Tag = delivery.tag
        return tag.ordering_key if self.options.ordering else ""

    def _modack(self, sub: str, ack_ids: list[str], seconds: int) -> None:
        client = self._sub()
        for i in range(0, len(ack_ids), MAX_BATCH):
            self._call(
                "modify ack deadline on subscription",
                sub,
                client.modify_ack_deadline,
                subscription=sub,
                ack_ids=ack_ids[i : i + MAX_BATCH],
                ack_deadline_seconds=seconds,
            )

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        """Give the messages back at once (ack deadline 0)."""
        by_sub: dict[str, list[str]] = {}
        for d in deliveries:
            tag: _Tag = d.tag
            by_sub.setdefault(tag.subscription, []).append(tag.ack_id)
        for sub, ids in by_sub.items():
            self._modack(sub, ids, 0)

    def _defer(self, delivery: Delivery, delay: float) -> None:
        """The message's ack deadline becomes ``delay`` seconds (rounded up, at most 600), so
        Pub/Sub redelivers it then; a still-early ETA is deferred again on redelivery."""
        tag: _Tag = delivery.tag
        self._modack(tag.subscription, [tag.ack_id], min(MAX_ACK_DEADLINE, max(0, math.ceil(delay))))

    def _extend(self, deliveries: Sequence[Delivery]) -> None:
        """The template's heartbeat (every second): extend the ack deadline of each held
        message whose deadline is near, until ``max_extension``."""
        extension = self.options.ack_deadline
        limit = self.options.max_extension
        now = time.monotonic()
        due: dict[str, list[_Tag]] = {}
        for d in deliveries:
            tag: _Tag = d.tag
            if not tag.extend:
                continue
            if limit and now - tag.started > limit:
                log.warning(
                    "a message of %s was held for over %.0fs (max_extension): no longer extended, "
                    "Pub/Sub will redeliver it",
                    tag.subscription,
                    limit,
                )
                tag.extend = False
                continue
            if tag.expires - now < max(2.5, tag.length / 3):
                due.setdefault(tag.subscription, []).append(tag)
        for sub, tags in due.items():
            try:
                self._modack(sub, [t.ack_id for t in tags], extension)
            except BrokerError as exc:
                log.warning("could not extend %d lease(s) on %s: %s", len(tags), sub, exc)
                continue
            for t in tags:
                t.expires, t.length = now + extension, float(extension)

    def _ack(self, delivery: Delivery) -> None:
        """Acknowledge the message (called after the task's final state is stored)."""
        tag: _Tag = delivery.tag
        self._call(
            "acknowledge on subscription",
            tag.subscription,
            self._sub().acknowledge,
            subscription=tag.subscription,
            ack_ids=[tag.ack_id],
        )

    def _dead_letter(self, delivery: Delivery) -> None:
        """``nack(requeue=False)``: the body is published to ``dead_letter_topic`` when
        configured, else logged; then the message is acknowledged."""
        tag: _Tag = delivery.tag
        dlt = self.options.dead_letter_topic
        if dlt:
            topic = f"projects/{self.project}/topics/{dlt}"
            msg = PubsubMessage(
                data=delivery.body,
                attributes={"MachinerySourceSubscription": tag.subscription, "MachinerySourceTopic": tag.topic},
            )
            self._call(
                "publish to dead-letter topic",
                topic,
                PublisherClient.publish,
                self=self._pub(),
                topic=topic,
                messages=[msg],
            )
        else:
            log.warning(
                "dropping message %s from %s (no gcp_pubsub.dead_letter_topic configured)",
                delivery.attributes.get("message_id", "?"),
                tag.subscription,
            )
        self._ack(delivery)

    # -- management -------------------------------------------------------------------------------

    def purge(self, queue: str | None = None) -> int:
        """Drop every message of the queue's subscription: pull-and-acknowledge what is
        available (counted), then ``Seek`` to now, which also drops messages that are leased
        (in flight or ETA-delayed) and so invisible to pull.

        :returns: the number of messages pulled and acknowledged.
        """
        info = self._queue(queue or self.default_queue)
        client = self._sub()
        count = 0
        seek_to = datetime.now(timezone.utc)
        while True:
            try:
                resp = client.pull(
                    subscription=info.subscription,
                    max_messages=MAX_BATCH,
                    timeout=self.options.pull_timeout,
                    retry=None,
                )
            except gexc.DeadlineExceeded:
                break
            except gexc.GoogleAPICallError as exc:
                raise translate(exc, "pull from subscription", info.subscription) from exc
            ids = [rm.ack_id for rm in resp.received_messages]
            if not ids:
                break
            self._call(
                "acknowledge on subscription",
                info.subscription,
                client.acknowledge,
                subscription=info.subscription,
                ack_ids=ids,
            )
            count += len(ids)
        self._call(
            "seek subscription",
            info.subscription,
            client.seek,
            request={"subscription": info.subscription, "time": seek_to},
        )
        return count

    def close(self) -> None:
        """Stop the heartbeat, give held messages back, and release the transport (the clients
        it made are closed with the last broker on it; clients passed in through the options
        are left open). Idempotent; the broker refuses work afterwards."""
        if self._closed:
            return
        held = self._held_deliveries()
        super().close()
        if held and self.transport.is_open:
            try:
                self._release(held)
            except BrokerError as exc:
                log.warning("could not give %d message(s) back (redelivered after their deadline): %s", len(held), exc)
        self._closed = True
        self.transport.release(self)


def _queue_of(topic: str) -> str:
    return topic.rpartition("/")[2]
