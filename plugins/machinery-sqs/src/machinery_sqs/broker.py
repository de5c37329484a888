"""AWS SQS broker: Go Machinery's ``https://sqs.<region>.amazonaws.com/<account>`` broker.

Messages are the signature JSON exactly as Go writes it, with no message attributes (Go sets
none). A received message stays invisible while its task runs: a heartbeat thread extends the
visibility timeout of every message this broker holds, and the message is deleted only on
:meth:`SQSBroker.ack` (after the task's final state is stored). A worker killed mid-task stops
extending, so SQS delivers the message again once its visibility timeout runs out.

ETA: SQS delays a message by at most 15 minutes (``DelaySeconds``) and FIFO queues not at all.
A message is published with ``DelaySeconds = min(ETA - now, 900)`` (standard queues); when the
consumer receives a message whose ETA is still a second or more away, it hides it again with
``ChangeMessageVisibility(min(ETA - now, 12 h))`` instead of yielding it (one due within the
second is kept and yielded when due). The broker therefore holds every message until its ETA
(``supports_native_delay``) and a task runs once, on time. Each hop is a receive: with a redrive
policy, ``maxReceiveCount`` must exceed 2 + (ETA - now) / 12 h.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.plugin import (
    BrokerConnectionError,
    BrokerError,
    ConfigError,
    DecodeError,
    Delivery,
    PollingBroker,
    PublishError,
    decode_signature,
)
from machinery_sqs import SQS_ENV
from machinery_sqs.transport import SQSTransport, error_code, translate

if TYPE_CHECKING:
    from machinery.plugin import Config, Signature

__all__ = ["SQSBroker", "SQSOptions"]

log = logging.getLogger("machinery.sqs")

#: SQS's limits: per-message delay, visibility timeout, batch size, batch payload.
MAX_DELAY_SECONDS = 900
MAX_VISIBILITY_SECONDS = 43200
MAX_BATCH = 10
MAX_BATCH_BYTES = 262144
#: Margin kept below the 12-hour visibility ceiling (counted from the receive).
_VISIBILITY_MARGIN = 60
#: Long-poll wait of one ReceiveMessage call: short enough to notice a stop request in time.
_POLL_SECONDS = 1
_NO_QUEUE = frozenset({"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"})
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,75}(\.fifo)?$|^[A-Za-z0-9_-]{1,80}$")
_ALIASES = {"receive_wait_time_seconds": "wait_time_seconds", "receive_visibility_timeout": "visibility_timeout"}


@dataclass
class SQSOptions:
    """The ``sqs:`` config section (Go's ``SQSConfig``), also accepted as URL query options.

    :param wait_time_seconds: Go's ``receive_wait_time_seconds`` (0-20), accepted so Go config
        files load. The consumer always long-polls in calls of 1 s: long enough not to spin on
        an empty queue (Go's default 0 does), short enough to notice a stop request in time.
    :param visibility_timeout: seconds a received message stays hidden (Go's
        ``receive_visibility_timeout``); None uses the queue's own setting.
    :param region: AWS region when the URL has none (else ``AWS_REGION``...).
    :param endpoint_url: endpoint override (else ``AWS_ENDPOINT_URL`` or AWS's endpoint).
    :param create_queues: create a queue that does not exist on first use (FIFO for ``.fifo``
        names). Set False where the credentials may not create queues.
    :param extend_visibility: extend the visibility of in-flight messages from a heartbeat
        thread so that long tasks are not delivered twice.
    :param batch_size: messages per ReceiveMessage call (1-10), further bounded by prefetch.
    :param max_delay_seconds: the longest ``DelaySeconds`` used on publish (SQS allows 900).
    :param client: a ready boto3 SQS client to use (Go's ``SQSConfig.Client``).
    :param session: a ``boto3.session.Session`` to create the client from.
    """

    wait_time_seconds: int = 1
    visibility_timeout: int | None = None
    region: str = ""
    endpoint_url: str = ""
    create_queues: bool = True
    extend_visibility: bool = True
    batch_size: int = MAX_BATCH
    max_delay_seconds: int = MAX_DELAY_SECONDS
    client: Any = None
    session: Any = None

    def __post_init__(self) -> None:
        if not 0 <= self.wait_time_seconds <= 20:
            raise ConfigError("sqs.wait_time_seconds", "must be between 0 and 20")
        if self.visibility_timeout is not None and not 0 <= self.visibility_timeout <= MAX_VISIBILITY_SECONDS:
            raise ConfigError("sqs.visibility_timeout", f"must be between 0 and {MAX_VISIBILITY_SECONDS}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ConfigError("sqs.batch_size", f"must be between 1 and {MAX_BATCH}")
        if not 0 <= self.max_delay_seconds <= MAX_DELAY_SECONDS:
            raise ConfigError("sqs.max_delay_seconds", f"must be between 0 and {MAX_DELAY_SECONDS}")


def redelay_seconds(remaining: float, held_for: float) -> int:
    """Seconds to hide a received message whose ETA is ``remaining`` seconds away.

    Visibility counts in whole seconds and may not exceed 12 hours from the receive, so a
    longer ETA takes several hops (each a new receive).

    :param remaining: seconds until the ETA (> 0).
    :param held_for: seconds since the message was received.
    """
    ceiling = MAX_VISIBILITY_SECONDS - _VISIBILITY_MARGIN - math.ceil(held_for)
    return max(1, min(math.ceil(remaining), ceiling))


def publish_delay(remaining: float, max_delay: int) -> int:
    """``DelaySeconds`` for a message due in ``remaining`` seconds (never early, at most ``max_delay``)."""
    if remaining <= 0:
        return 0
    return min(math.ceil(remaining), max_delay)


class SQSBroker(PollingBroker):
    """Broker on AWS SQS (standard and FIFO queues).

    URLs: ``https://sqs.<region>.amazonaws.com/<account-id>`` (Go's form: the queue URL is the
    broker URL + ``/`` + queue name; ``http://host:port/<account-id>`` likewise for a local
    server, which also becomes the endpoint) or ``sqs://[region][/account-id]`` (queue URLs
    looked up by name). A ready boto3 client goes in ``Config.transport_options["sqs"]["client"]``.
    """

    supports_native_delay: ClassVar[bool] = True
    supports_priority: ClassVar[bool] = False
    supports_pending_listing: ClassVar[bool] = False
    supports_delayed_listing: ClassVar[bool] = False
    redelivers_unacked: ClassVar[bool] = True
    #: SQS's default visibility timeout; a configured one replaces it.
    redelivery_timeout: ClassVar[float] = 30.0
    supports_purge: ClassVar[bool] = True
    config_section: ClassVar[str | None] = "sqs"
    env_options: ClassVar[dict[str, str]] = SQS_ENV
    #: SQS delays a message by 15 minutes at most: the consumer hides an early one again until
    #: its ETA (:meth:`_defer`), so the broker holds every message until due.
    eta_in_consumer: ClassVar[bool | None] = True
    #: One ReceiveMessage long-polls 1 s at most: a stop request is noticed in time.
    fetch_wait: ClassVar[float] = 1.0
    fetch_max: ClassVar[int] = MAX_BATCH
    backoff_initial: ClassVar[float] = 0.5

    def __init__(self, url: str, config: Config, *, transport: SQSTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport: the URL and options parsed once, and the boto3 client.
        self.transport: SQSTransport = SQSTransport.attach(self, url, config, transport)
        self.target = self.transport.target
        self.options = self.transport.options
        self._lock = threading.Lock()
        self._urls: dict[str, str] = {}
        self._visibility: dict[str, int] = {}
        self._redrive: dict[str, str | None] = {}

    # -- queues -----------------------------------------------------------------------------------

    def _sqs(self) -> Any:
        return self.transport.connection_for(self)

    def _queue_url(self, queue: str) -> str:
        url = self._urls.get(queue)
        if url is not None:
            return url
        if not _QUEUE_NAME.match(queue):
            raise ConfigError(
                "queue",
                f"{queue!r} is not a valid SQS queue name (1-80 letters, digits, '-' or '_', "
                "optionally ending in '.fifo')",
            )
        if self.target.base:
            url = f"{self.target.base}/{queue}"
        else:
            kwargs = {"QueueName": queue}
            if self.target.path:
                kwargs["QueueOwnerAWSAccountId"] = self.target.path
            try:
                url = self._sqs().get_queue_url(**kwargs)["QueueUrl"]
            except Exception as exc:
                if error_code(exc) not in _NO_QUEUE or not self.options.create_queues:
                    raise self._error(exc, f"find SQS queue {queue!r}") from exc
                url = self._create_queue(queue)
        with self._lock:
            self._urls[queue] = url
        return url

    def _create_queue(self, queue: str) -> str:
        attrs: dict[str, str] = {}
        if queue.endswith(".fifo"):
            attrs["FifoQueue"] = "true"
        if self.options.visibility_timeout is not None:
            attrs["VisibilityTimeout"] = str(self.options.visibility_timeout)
        try:
            url: str = self._sqs().create_queue(QueueName=queue, Attributes=attrs)["QueueUrl"]
        except Exception as exc:
            if error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
                raise self._error(exc, f"create SQS queue {queue!r}") from exc
            url = self._sqs().get_queue_url(QueueName=queue)["QueueUrl"]
        log.info("created SQS queue %r", queue)
        if self.target.base:
            return f"{self.target.base}/{queue}"
        return url

    def _call(self, queue: str, op: str, what: str, error: type[BrokerError] = BrokerError, **params: Any) -> Any:
        """Call an SQS operation on ``queue``'s URL, creating the queue once if it is missing."""
        url = self._queue_url(queue)
        try:
            return getattr(self._sqs(), op)(QueueUrl=url, **params)
        except Exception as exc:
            if error_code(exc) not in _NO_QUEUE or not self.options.create_queues:
                raise self._error(exc, what, error) from exc
        url = self._create_queue(queue)
        with self._lock:
            self._urls[queue] = url
        try:
            return getattr(self._sqs(), op)(QueueUrl=url, **params)
        except Exception as exc:
            raise self._error(exc, what, error) from exc

    def _error(self, exc: BaseException, what: str, error: type[BrokerError] = BrokerError) -> Exception:
        if isinstance(exc, (BrokerError, ConfigError)):
            return exc
        return translate(exc, what, error, BrokerConnectionError)

    def _queue_visibility(self, queue: str, url: str) -> int:
        vis = self._visibility.get(url)
        if vis is None:
            if self.options.visibility_timeout is not None:
                vis = self.options.visibility_timeout
            else:
                attrs = self._call(queue, "get_queue_attributes", f"read SQS queue {queue!r}", AttributeNames=["All"])
                vis = int(attrs["Attributes"].get("VisibilityTimeout", 30))
            if vis <= 0:
                vis = 30  # a message visible again at once would run twice: use SQS's default
            self._visibility[url] = vis
        return vis

    # -- publishing -------------------------------------------------------------------------------

    def _message(self, body: bytes, signature: Signature, queue: str) -> dict[str, Any]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PublishError(
                f"cannot send task {signature.uuid} to SQS queue {queue!r}: SQS message bodies are text, "
                f"and this body is not UTF-8 ({exc.reason} at byte {exc.start})",
                signature.uuid,
            ) from None
        msg: dict[str, Any] = {"MessageBody": text}
        if queue.endswith(".fifo"):
            if not signature.broker_message_group_id:
                raise PublishError(
                    f"task {signature.uuid}: a FIFO queue ({queue!r}) needs the signature's "
                    "broker_message_group_id (Go's BrokerMessageGroupId)",
                    signature.uuid,
                )
            msg["MessageGroupId"] = signature.broker_message_group_id
            # Go uses the task UUID; a retry re-sends the same UUID within SQS's 5-minute window
            # and would be dropped, so the body's digest tells retries from duplicates.
            msg["MessageDeduplicationId"] = f"{signature.uuid}-{hashlib.sha256(body).hexdigest()[:32]}"
        elif signature.eta is not None:
            delay = publish_delay(signature.eta.timestamp() - time.time(), self.options.max_delay_seconds)
            if delay:
                msg["DelaySeconds"] = delay
        return msg

    def publish(self, body: bytes, signature: Signature) -> None:
        """Send one message (``SendMessage``) to the signature's queue, delayed up to 15 min by its ETA."""
        queue = self.queue_for(signature)
        msg = self._message(body, signature, queue)
        self._call(queue, "send_message", f"send task {signature.uuid} to SQS queue {queue!r}", PublishError, **msg)

    def publish_many(self, items: Sequence[tuple[bytes, Signature]]) -> None:
        """Send messages with ``SendMessageBatch``: per queue, in chunks of 10 (and 256 KiB).

        :raises PublishError: naming the tasks SQS did not accept (the others were sent).
        """
        by_queue: dict[str, list[tuple[dict[str, Any], Signature]]] = {}
        for body, sig in items:
            queue = self.queue_for(sig)
            by_queue.setdefault(queue, []).append((self._message(body, sig, queue), sig))
        failed: list[str] = []
        for queue, msgs in by_queue.items():
            for chunk in _chunks(msgs):
                entries = [{"Id": str(i), **m} for i, (m, _) in enumerate(chunk)]
                out = self._call(
                    queue, "send_message_batch", f"send to SQS queue {queue!r}", PublishError, Entries=entries
                )
                for f in out.get("Failed") or ():
                    sig = chunk[int(f["Id"])][1]
                    failed.append(f"{sig.uuid} ({f.get('Code')}: {f.get('Message', '')})")
        if failed:
            raise PublishError(
                f"SQS did not accept {len(failed)} of {len(items)} messages: {'; '.join(failed)}",
                failed[0].split(" ", 1)[0],
            )

    # -- consuming (the core's consume template) ---------------------------------------------------

    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        """One ``ReceiveMessage`` of up to ``max_n`` (and ``batch_size``) messages, long-polling
        ``wait`` seconds (whole seconds, 1 at most)."""
        url = self._queue_url(queue)
        vis = self._queue_visibility(queue, url)
        if self.options.extend_visibility:
            # a third of the shortest visibility timeout of the queues consumed (not of the
            # messages held now: one received while sleeping must be extended in time)
            self.extend_interval = min(max(min(self._visibility.values()) / 3.0, 0.3), 60.0)
        params: dict[str, Any] = {
            "MaxNumberOfMessages": max(1, min(self.options.batch_size, max_n)),
            "WaitTimeSeconds": min(int(wait), _POLL_SECONDS),
            "MessageSystemAttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
            "VisibilityTimeout": vis,
        }
        what = f"receive from SQS queue {queue!r}"
        try:
            messages = self._call(queue, "receive_message", what, **params).get("Messages") or ()
        except BrokerConnectionError:
            raise
        except BrokerError as exc:  # a refusal may pass too (throttling...): back off, try again
            raise BrokerConnectionError(str(exc)) from exc
        url = self._urls.get(queue, url)
        received = time.monotonic()
        return [self._delivery(m, m["Body"].encode("utf-8"), queue, url, received, vis) for m in messages]

    @staticmethod
    def _delivery(m: Mapping[str, Any], body: bytes, queue: str, url: str, received: float, vis: int) -> Delivery:
        sysattrs = m.get("Attributes") or {}
        return Delivery(
            body=body,
            queue=queue,
            tag=m["ReceiptHandle"],
            redelivered=int(sysattrs.get("ApproximateReceiveCount", "1")) > 1,
            attributes={
                "queue_url": url,
                "message_id": m.get("MessageId", ""),
                "attributes": sysattrs,
                "message_attributes": m.get("MessageAttributes") or {},
                "received_at": received,  # time.monotonic() of the receive
                "visibility": vis,
            },
        )

    def _url_of(self, delivery: Delivery) -> str:
        return str(delivery.attributes.get("queue_url") or self._queue_url(delivery.queue))

    @staticmethod
    def _held_for(delivery: Delivery) -> float:
        received = delivery.attributes.get("received_at")
        return time.monotonic() - received if isinstance(received, float) else 0.0

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        """Make the messages visible again at once."""
        if len(deliveries) == 1:
            (d,) = deliveries
            try:
                self._sqs().change_message_visibility(
                    QueueUrl=self._url_of(d), ReceiptHandle=d.tag, VisibilityTimeout=0
                )
            except Exception as exc:
                raise self._error(exc, f"return a message to SQS queue {d.queue!r}") from exc
            return
        by_url: dict[str, list[tuple[str, int]]] = {}
        for d in deliveries:
            by_url.setdefault(self._url_of(d), []).append((d.tag, 0))
        for url, entries in by_url.items():
            try:
                self._change_visibility(url, entries)
            except Exception:  # noqa: BLE001 - they come back after the visibility timeout anyway
                log.warning(
                    "could not release %d SQS message(s); they return after their visibility timeout", len(entries)
                )

    def _defer(self, delivery: Delivery, delay: float) -> None:
        """Hide the message for ``delay`` seconds (at most 12 h from the receive): an early ETA
        (each hop is a receive) or ``nack(delay=...)``."""
        vis = redelay_seconds(delay, self._held_for(delivery))
        try:
            self._sqs().change_message_visibility(
                QueueUrl=self._url_of(delivery), ReceiptHandle=delivery.tag, VisibilityTimeout=vis
            )
        except Exception as exc:
            raise self._error(exc, f"return a message to SQS queue {delivery.queue!r}") from exc

    def _change_visibility(self, url: str, entries: Sequence[tuple[str, int]]) -> list[str]:
        """``ChangeMessageVisibilityBatch`` in chunks of 10; returns the handles that failed."""
        failed: list[str] = []
        sqs = self._sqs()
        for i in range(0, len(entries), MAX_BATCH):
            chunk = entries[i : i + MAX_BATCH]
            out = sqs.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(j), "ReceiptHandle": rh, "VisibilityTimeout": v} for j, (rh, v) in enumerate(chunk)
                ],
            )
            failed.extend(chunk[int(f["Id"])][0] for f in out.get("Failed") or ())
        return failed

    def _extend(self, deliveries: Sequence[Delivery]) -> None:
        """Extend the visibility of the messages held (the template's heartbeat; it never runs
        at the same time as a settle of the same message)."""
        by_url: dict[str, list[tuple[str, int]]] = {}
        for d in deliveries:
            limit = MAX_VISIBILITY_SECONDS - math.ceil(self._held_for(d)) - 1
            vis = min(int(d.attributes.get("visibility", 30)), limit)
            if vis <= 0:
                continue  # 12 hours since the receive: SQS allows no more
            by_url.setdefault(self._url_of(d), []).append((d.tag, vis))
        for url, entries in by_url.items():
            self._change_visibility(url, entries)  # a failed entry: deleted or expired meanwhile

    # -- settling ---------------------------------------------------------------------------------

    def _ack(self, delivery: Delivery) -> None:
        """Delete the message (``DeleteMessage``); called once the task's final state is stored."""
        try:
            self._sqs().delete_message(QueueUrl=self._url_of(delivery), ReceiptHandle=delivery.tag)
        except Exception as exc:
            raise self._error(exc, f"delete a message from SQS queue {delivery.queue!r}") from exc

    def _dead_letter(self, delivery: Delivery) -> None:
        """``nack(requeue=False)``: when the task asked for ``StopTaskDeletionOnError`` the
        message is left alone, as Go does: it returns after its visibility timeout and the
        queue's redrive policy moves it to the dead-letter queue after ``maxReceiveCount``
        receives. Otherwise (malformed message...) it is moved to the queue's dead-letter queue
        when a redrive policy names one, else deleted (the worker has logged its body).
        """
        if _stops_deletion(delivery.body):
            return
        url = self._url_of(delivery)
        try:
            dlq = self._dead_letter_url(delivery.queue, url)
            if dlq is not None:
                msg: dict[str, Any] = {"MessageBody": delivery.body.decode("utf-8", "replace")}
                group = (delivery.attributes.get("attributes") or {}).get("MessageGroupId")
                if dlq.endswith(".fifo"):
                    msg["MessageGroupId"] = group or "machinery-dead-letters"
                    msg["MessageDeduplicationId"] = delivery.attributes.get("message_id") or delivery.tag[:128]
                self._sqs().send_message(QueueUrl=dlq, **msg)
            self._sqs().delete_message(QueueUrl=url, ReceiptHandle=delivery.tag)
        except Exception as exc:
            raise self._error(exc, f"dead-letter a message of SQS queue {delivery.queue!r}") from exc

    def _dead_letter_url(self, queue: str, url: str) -> str | None:
        if url not in self._redrive:
            attrs = self._call(
                queue, "get_queue_attributes", f"read SQS queue {queue!r}", AttributeNames=["RedrivePolicy"]
            )
            policy = attrs.get("Attributes", {}).get("RedrivePolicy")
            dlq: str | None = None
            if policy:
                arn = str(json.loads(policy).get("deadLetterTargetArn", ""))
                parts = arn.split(":")
                if len(parts) == 6:
                    dlq = self._sqs().get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"]
            self._redrive[url] = dlq
        return self._redrive[url]

    # -- admin ------------------------------------------------------------------------------------

    def purge(self, queue: str | None = None) -> int:
        """Delete the queue's waiting messages (receive and delete in batches); returns how many.

        Messages being processed by a worker and delayed ones are left alone. (``PurgeQueue``
        would also drop those, and AWS allows it once a minute.)
        """
        queue = queue or self.default_queue
        url = self._queue_url(queue)
        what = f"purge SQS queue {queue!r}"
        removed = 0
        while True:
            receive: dict[str, Any] = {"MaxNumberOfMessages": MAX_BATCH, "VisibilityTimeout": 30}
            msgs = self._call(queue, "receive_message", what, WaitTimeSeconds=0, **receive).get("Messages")
            if not msgs:
                # a short poll samples some servers only: ask for the count, long-poll if not 0
                attrs = self._call(queue, "get_queue_attributes", what, AttributeNames=["ApproximateNumberOfMessages"])
                if int(attrs["Attributes"].get("ApproximateNumberOfMessages", "0")) == 0:
                    return removed
                msgs = self._call(queue, "receive_message", what, WaitTimeSeconds=1, **receive).get("Messages")
                if not msgs:
                    return removed
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)]
            try:
                res = self._sqs().delete_message_batch(QueueUrl=url, Entries=entries)
            except Exception as exc:
                raise self._error(exc, what) from exc
            removed += len(entries) - len(res.get("Failed") or ())

    def close(self) -> None:
        """Stop the heartbeat and release the transport (its client is closed with the last
        role). Idempotent. Messages still held come back after their visibility timeout.
        """
        super().close()
        self.transport.release(self)


def aliased(opts: Mapping[str, Any]) -> dict[str, Any]:
    """``opts`` with Go's spellings of option names replaced by this plugin's."""
    return {_ALIASES.get(k.lower(), k): v for k, v in opts.items()}


def _stops_deletion(body: bytes) -> bool:
    if b"StopTaskDeletionOnError" not in body and b"stoptaskdeletiononerror" not in body.lower():
        return False
    try:
        return decode_signature(body).stop_task_deletion_on_error
    except DecodeError:
        return False


def _chunks(msgs: Sequence[tuple[dict[str, Any], Signature]]) -> Iterator[Sequence[tuple[dict[str, Any], Signature]]]:
    chunk: list[tuple[dict[str, Any], Signature]] = []
    size = 0
    for item in msgs:
        n = len(item[0]["MessageBody"].encode("utf-8"))
        if chunk and (len(chunk) == MAX_BATCH or size + n > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk
