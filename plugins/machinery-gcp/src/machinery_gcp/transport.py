"""The Google Cloud Pub/Sub transport: ``gcppubsub://PROJECT_ID/SUBSCRIPTION_NAME`` and the
``gcp_pubsub:`` section parsed once, the Pub/Sub clients (:class:`PubSubClients`, made on first
use and shared by every broker on the same URL and configuration, closed with the last of them)
and the translation of Google's exceptions into machinery's.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import parse_qsl

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type
from google.auth import exceptions as auth_exc
from google.pubsub_v1 import PublisherClient, SubscriberClient

from machinery.plugin import BrokerConnectionError, BrokerError, ConfigError, Transport, parse_options, redact_url

if TYPE_CHECKING:
    from machinery.plugin import Config

__all__ = [
    "GCPPubSubError",
    "GCPPubSubOptions",
    "GCPPubSubTransport",
    "PubSubClients",
    "check_id",
    "parse_url",
    "translate",
]

log = logging.getLogger("machinery.broker.gcppubsub")

T = TypeVar("T")

SCHEME = "gcppubsub"
#: Pub/Sub's limit for one ModifyAckDeadline: 600 s. Longer ETAs take several hops.
MAX_ACK_DEADLINE = 600
MIN_ACK_DEADLINE = 10
#: Topic and subscription ids: a letter, then 2-254 of letters, digits and ``-_.~+%``.
_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
_URL_FORM = f"{SCHEME}://YOUR_GCP_PROJECT_ID/YOUR_PUBSUB_SUBSCRIPTION_NAME"


class GCPPubSubError(BrokerError):
    """A Pub/Sub call failed (missing resource, permission, invalid name...).

    :param message: what failed, naming the topic or subscription.
    :param resource: the full resource name (``projects/p/topics/t``).
    :param code: the gRPC status name (``NOT_FOUND``, ``PERMISSION_DENIED``...), or "".
    """

    def __init__(self, message: str, *, resource: str = "", code: str = "") -> None:
        self.resource = resource
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class GCPPubSubOptions:
    """The ``gcp_pubsub:`` config section.

    :param create_missing: create missing topics and subscriptions (Go only checks that they
        exist and fails otherwise, which stays the default).
    :param ack_deadline: seconds of each lease extension, and the ack deadline of created
        subscriptions (10-600). A killed worker's message comes back within this time.
    :param max_extension: stop extending a message's lease after this many seconds (Go's
        ``MaxExtension``); the message is then redelivered. 0 means no limit.
    :param max_messages: cap on messages per pull (0: the worker's prefetch).
    :param pull_timeout: seconds one pull waits for messages; bounds how fast ``stop`` is seen.
    :param timeout: seconds one Pub/Sub call (publish, acknowledge, create...) may take,
        retries of transient errors included.
    :param ordering: created subscriptions deliver in order, and messages carry an ordering key
        (the signature's ``BrokerMessageGroupId``, else ``ordering_key``, else the queue name).
    :param ordering_key: the ordering key used when the signature names none.
    :param dead_letter_topic: topic id that ``nack(requeue=False)`` sends messages to; without
        it they are logged and acknowledged.
    :param max_delivery_attempts: when > 0 (5-100) and ``dead_letter_topic`` is set, created
        subscriptions get Pub/Sub's dead-letter policy with this many attempts.
    :param topic_retention: seconds created topics keep messages, even acknowledged ones
        (Pub/Sub's topic ``message_retention_duration``: 600 to 2,678,400; 0 = off). Lets a
        subscription seek back in time or to a snapshot, e.g. to replay or inspect a queue.
    :param subscriptions: queue name to subscription id, overriding the derived names.
    :param publisher: a ready ``google.pubsub_v1.PublisherClient`` (or
        ``google.cloud.pubsub_v1.PublisherClient``) to use instead of building one.
    :param subscriber: a ready ``SubscriberClient`` to use instead of building one.
    """

    create_missing: bool = False
    ack_deadline: int = 60
    max_extension: float = 3600.0
    max_messages: int = 0
    pull_timeout: float = 1.5
    timeout: float = 60.0
    ordering: bool = False
    ordering_key: str = ""
    dead_letter_topic: str = ""
    max_delivery_attempts: int = 0
    topic_retention: int = 0
    subscriptions: dict[str, str] = field(default_factory=dict)
    publisher: Any = None
    subscriber: Any = None

    def __post_init__(self) -> None:
        if not MIN_ACK_DEADLINE <= self.ack_deadline <= MAX_ACK_DEADLINE:
            raise ConfigError("gcp_pubsub.ack_deadline", f"must be {MIN_ACK_DEADLINE}-{MAX_ACK_DEADLINE} seconds")
        if self.max_extension < 0:
            raise ConfigError("gcp_pubsub.max_extension", "must be >= 0 seconds")
        if self.max_messages < 0:
            raise ConfigError("gcp_pubsub.max_messages", "must be >= 0")
        if self.pull_timeout <= 0:
            raise ConfigError("gcp_pubsub.pull_timeout", "must be > 0 seconds")
        if self.timeout <= 0:
            raise ConfigError("gcp_pubsub.timeout", "must be > 0 seconds")
        if self.max_delivery_attempts and not 5 <= self.max_delivery_attempts <= 100:
            raise ConfigError("gcp_pubsub.max_delivery_attempts", "must be 0 (no policy) or 5-100")
        if self.max_delivery_attempts and not self.dead_letter_topic:
            raise ConfigError("gcp_pubsub.max_delivery_attempts", "needs gcp_pubsub.dead_letter_topic")
        if self.topic_retention and not 600 <= self.topic_retention <= 2_678_400:
            raise ConfigError(
                "gcp_pubsub.topic_retention", "must be 0 (off) or 600-2678400 seconds (10 min to 31 days)"
            )
        if self.dead_letter_topic:
            check_id(self.dead_letter_topic, "gcp_pubsub.dead_letter_topic", "topic")
        for queue, sub in self.subscriptions.items():
            check_id(str(sub), f"gcp_pubsub.subscriptions.{queue}", "subscription")


def check_id(value: str, key: str, kind: str) -> str:
    """``value`` if it is a valid Pub/Sub ``kind`` id (``topic``, ``subscription``).

    :raises ConfigError: it is not (``key`` names where it came from).
    """
    if not _ID_RE.fullmatch(value) or value.startswith("goog"):
        raise ConfigError(
            key,
            f"{value!r} is not a valid Pub/Sub {kind} id (3-255 characters, starting with a letter, "
            "then letters, digits and - _ . ~ + %; not starting with 'goog')",
        )
    return value


def parse_url(url: str) -> tuple[str, str, dict[str, str]]:
    """Split ``gcppubsub://PROJECT_ID/SUBSCRIPTION_NAME[?option=value...]``.

    :returns: the project id, the subscription id and the query-string options.
    :raises ConfigError: the URL is not of that form.
    """
    head, sep, rest = url.partition("://")
    if not sep or head.lower() != SCHEME:
        raise ConfigError("broker", f"not a {SCHEME}:// URL: {redact_url(url)!r}")
    rest, _, query = rest.partition("?")
    parts = rest.split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ConfigError("broker", f"expected {_URL_FORM}, got {redact_url(url)!r}")
    project, subscription = parts
    check_id(subscription, "broker", "subscription")
    return project, subscription, dict(parse_qsl(query, keep_blank_values=True))


_TRANSIENT = if_exception_type(
    gexc.Aborted,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.ResourceExhausted,
    gexc.ServiceUnavailable,
    gexc.Unknown,
)
_CONNECTION_CODES = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.Unauthenticated)


def translate(exc: gexc.GoogleAPICallError, what: str, resource: str) -> BrokerError:
    """The machinery error for a failed Pub/Sub call (the caller raises it ``from exc``):
    :class:`BrokerConnectionError` for an unavailable or unauthenticated service, else a
    :class:`GCPPubSubError` naming ``resource`` and the gRPC code."""
    code = exc.grpc_status_code.name if exc.grpc_status_code is not None else ""
    detail = exc.message or str(exc)
    if isinstance(exc, gexc.NotFound):
        kind = "subscription" if "/subscriptions/" in resource else "topic"
        return GCPPubSubError(
            f"Pub/Sub {what} {resource}: the {kind} does not exist "
            f"(create it, or set gcp_pubsub.create_missing: true) [{detail}]",
            resource=resource,
            code=code or "NOT_FOUND",
        )
    if isinstance(exc, gexc.PermissionDenied):
        return GCPPubSubError(
            f"Pub/Sub {what} {resource}: permission denied for these credentials [{detail}]",
            resource=resource,
            code=code or "PERMISSION_DENIED",
        )
    if isinstance(exc, gexc.AlreadyExists):
        return GCPPubSubError(
            f"Pub/Sub {what} {resource}: already exists [{detail}]", resource=resource, code=code or "ALREADY_EXISTS"
        )
    if isinstance(exc, _CONNECTION_CODES):
        return BrokerConnectionError(f"Pub/Sub {what} {resource}: {type(exc).__name__} [{detail}]")
    return GCPPubSubError(f"Pub/Sub {what} {resource}: {type(exc).__name__} [{detail}]", resource=resource, code=code)


def _make_client(cls: type[T]) -> T:
    try:
        return cls()
    except auth_exc.DefaultCredentialsError as exc:
        raise BrokerConnectionError(
            "no Google credentials for Pub/Sub: set GOOGLE_APPLICATION_CREDENTIALS, run on GCP, "
            "or set PUBSUB_EMULATOR_HOST for the emulator"
        ) from exc


class PubSubClients:
    """A transport's Pub/Sub clients, each made on first use (a client given in the options is
    used as it is and never closed).

    :param options: the ``gcp_pubsub:`` section.
    """

    def __init__(self, options: GCPPubSubOptions) -> None:
        self._lock = threading.Lock()
        self._publisher: Any = options.publisher
        self._subscriber: Any = options.subscriber
        self._made: list[Any] = []

    @property
    def publisher(self) -> Any:
        """The ``PublisherClient``."""
        if self._publisher is None:
            with self._lock:
                if self._publisher is None:
                    self._publisher = _make_client(PublisherClient)
                    self._made.append(self._publisher)
        return self._publisher

    @property
    def subscriber(self) -> Any:
        """The ``SubscriberClient``."""
        if self._subscriber is None:
            with self._lock:
                if self._subscriber is None:
                    self._subscriber = _make_client(SubscriberClient)
                    self._made.append(self._subscriber)
        return self._subscriber

    def close(self) -> None:
        """Close the clients made here."""
        with self._lock:
            made, self._made = self._made, []
        for client in made:
            try:
                client.transport.close()
            except Exception as exc:  # noqa: BLE001 - closing must not raise
                log.debug("closing a Pub/Sub client failed: %s", exc)


class GCPPubSubTransport(Transport):
    """``gcppubsub://PROJECT_ID/SUBSCRIPTION_NAME[?option=value...]`` and the ``gcp_pubsub:``
    section (the query string wins); its connection is a :class:`PubSubClients`.

    :raises ConfigError: a bad URL or option.
    """

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {"broker": "machinery_gcp.broker:GCPPubSubBroker"}
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = _CONNECTION_CODES

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        project, subscription, query = parse_url(url)
        #: The project id and the URL's subscription id.
        self.project, self.subscription = project, subscription
        #: The ``gcp_pubsub:`` section, with the URL's query options.
        self.options = parse_options(GCPPubSubOptions, "gcp_pubsub", config.section("gcp_pubsub"), query)
        #: How transient errors are retried (within ``timeout``).
        self.retry = Retry(initial=0.1, maximum=5.0, multiplier=2.0, predicate=_TRANSIENT, timeout=self.options.timeout)

    def open(self) -> PubSubClients:
        """The clients (each made on first use)."""
        return PubSubClients(self.options)

    def close_connection(self, connection: PubSubClients) -> None:
        """Close the clients the transport made."""
        connection.close()

    def call(self, what: str, resource: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """Run one API call within ``timeout`` (transient errors retried), turning Google's
        exceptions into machinery errors."""
        kwargs.setdefault("retry", self.retry)
        kwargs.setdefault("timeout", self.options.timeout)
        try:
            return fn(**kwargs)
        except gexc.GoogleAPICallError as exc:
            raise translate(exc, what, resource) from exc
        except gexc.RetryError as exc:
            raise BrokerConnectionError(f"Pub/Sub {what} {resource}: gave up retrying ({exc.cause})") from exc
        except auth_exc.GoogleAuthError as exc:
            raise BrokerConnectionError(f"Pub/Sub {what} {resource}: authentication failed ({exc})") from exc
