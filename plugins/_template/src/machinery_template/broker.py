"""``TemplateBroker``: moves task messages between producers and workers.

TEMPLATE: this is a working example whose "server" lives in this process (:class:`_ExampleServer`),
so the conformance suite passes against it as it is. To write a real transport, replace every use
of ``_ExampleServer`` with calls to your client library, keep each method's contract (read the
docstrings of :class:`machinery.interfaces.Broker`), set the capability attributes to what your
server really does, and delete the example classes. Lines to revisit are marked ``TEMPLATE:``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from machinery.plugin import ConfigError, Delivery, PollingBroker, parse_options, redact_url

if TYPE_CHECKING:
    from machinery.plugin import Config, Signature

__all__ = ["TemplateBroker", "TemplateOptions", "server_name"]


@dataclass(frozen=True)
class TemplateOptions:
    """The ``template:`` config section, parsed with :func:`machinery.config.parse_options`
    (which reports unknown keys and bad values by name).

    TEMPLATE: one field per option, each with a default; use Go Machinery's key names when Go
    has the option (``max_idle``, ``visibility_timeout``...).

    :param poll_interval: longest wait, in seconds, of one look at the example server (``_fetch``
        waits at most the core's ``fetch_wait`` in all).
    """

    poll_interval: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.poll_interval <= 1:
            raise ConfigError("template.poll_interval", "must be > 0 and <= 1")


def server_name(url: str, key: str = "broker") -> str:
    """The example server a ``template://<name>`` URL names.

    :param url: the URL.
    :param key: the config key it came from, for the error message.

    TEMPLATE: parse your URL form here and raise :class:`~machinery.errors.ConfigError` naming
    what is wrong, with :func:`~machinery.config.redact_url` around the URL in the message.
    """
    scheme, sep, rest = url.partition("://")
    if scheme != "template" or not sep or "/" in rest.strip("/"):
        raise ConfigError(key, f"expected template://<name>, got {redact_url(url)!r}")
    return rest.strip("/")


@dataclass
class _ExampleServer:
    """TEMPLATE: stands in for your broker server. Delete it when you use a real client."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    ready: dict[str, deque[tuple[int, bytes]]] = field(default_factory=dict)  # queue -> (id, body)
    delayed: list[tuple[float, int, str, bytes]] = field(default_factory=list)  # heap: (due, id, queue, body)
    unacked: dict[int, tuple[str, bytes]] = field(default_factory=dict)  # id -> (queue, body)
    ids: itertools.count[int] = field(default_factory=itertools.count)


_SERVERS: dict[str, _ExampleServer] = {}
_SERVERS_LOCK = threading.Lock()


def example_server(name: str) -> _ExampleServer:
    """The in-process example server called ``name`` (created on first use)."""
    with _SERVERS_LOCK:
        return _SERVERS.setdefault(name, _ExampleServer())


class TemplateBroker(PollingBroker):
    """Broker for ``template://<name>`` URLs.

    Safe to use from several threads: ``publish`` from producers, ``ack``/``nack`` from task
    threads while ``consume`` runs in the consumer thread.
    """

    # TEMPLATE: declare what your server really does; the core and the suite read these.
    supports_native_delay: ClassVar[bool] = False  # the core holds back early ETAs (see _defer)
    supports_priority: ClassVar[bool] = False
    supports_pending_listing: ClassVar[bool] = False
    supports_delayed_listing: ClassVar[bool] = False
    redelivers_unacked: ClassVar[bool] = False  # in-process: nothing survives the consumer's process
    supports_purge: ClassVar[bool] = True
    config_section: ClassVar[str | None] = "template"
    #: Go-style environment variables mapped to keys of the ``template:`` section.
    env_options: ClassVar[dict[str, str]] = {"TEMPLATE_POLL_INTERVAL": "poll_interval"}

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        # Parse everything now, so a bad URL or option fails when the Server is built...
        self.options = parse_options(TemplateOptions, "template", config.section("template"))
        self._name = server_name(url)
        # ...but connect lazily (TEMPLATE: create your client or pool on first use).
        self._server: _ExampleServer | None = None

    @property
    def server(self) -> _ExampleServer:
        """The connection, made on first use."""
        if self._server is None:
            self._server = example_server(self._name)
        return self._server

    def publish(self, body: bytes, signature: Signature) -> None:
        """Append the message to its queue (``signature.routing_key``).

        TEMPLATE: send ``body`` as it is (it is Go Machinery's JSON) and return only once the
        server has accepted it; translate client errors into ``PublishError`` or
        ``BrokerConnectionError`` with ``raise ... from exc``.
        """
        s = self.server
        with s.cond:
            s.ready.setdefault(self.queue_for(signature), deque()).append((next(s.ids), body))
            s.cond.notify_all()

    def publish_many(self, items: Sequence[tuple[bytes, Signature]]) -> None:
        """Publish several messages at once (TEMPLATE: pipeline or batch them in one round trip)."""
        s = self.server
        with s.cond:
            for body, sig in items:
                s.ready.setdefault(self.queue_for(sig), deque()).append((next(s.ids), body))
            s.cond.notify_all()

    # -- the consume template's primitives ----------------------------------------------------------
    #
    # The core's PollingBroker owns consume/ack/nack: stopping within fetch_wait, prefetch, back-off
    # on BrokerConnectionError, ETA emulation (supports_native_delay False) and giving back what
    # was fetched but not handed out. A broker implements these few primitives.

    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        """Take up to ``max_n`` messages of ``queue``, waiting at most ``wait`` seconds.

        TEMPLATE: use your server's blocking receive with ``wait`` as its timeout (never sleep in
        a loop when a blocking call exists); raise ``BrokerConnectionError`` on connection loss
        (the core backs off and calls ``_reconnect``).
        """
        s = self.server
        deadline = time.monotonic() + wait
        with s.cond:
            while True:
                self._promote_due(s)
                q = s.ready.get(queue)
                if q:
                    out: list[Delivery] = []
                    while q and len(out) < max_n:
                        msg_id, body = q.popleft()
                        s.unacked[msg_id] = (queue, body)
                        out.append(Delivery(body=body, queue=queue, tag=msg_id))
                    return out
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                s.cond.wait(min(left, self.options.poll_interval))

    @staticmethod
    def _promote_due(s: _ExampleServer) -> None:
        now = time.time()
        while s.delayed and s.delayed[0][0] <= now:
            _, msg_id, queue, body = heapq.heappop(s.delayed)
            s.ready.setdefault(queue, deque()).append((msg_id, body))

    def _ack(self, delivery: Delivery) -> None:
        """Remove the message for good (called after the task's final state is stored)."""
        with self.server.cond:
            self.server.unacked.pop(delivery.tag, None)

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        """Make the messages deliverable again at once."""
        s = self.server
        with s.cond:
            for d in deliveries:
                entry = s.unacked.pop(d.tag, None)
                if entry is not None:
                    queue, body = entry
                    s.ready.setdefault(queue, deque()).append((next(s.ids), body))
            s.cond.notify_all()

    def _defer(self, delivery: Delivery, delay: float) -> None:
        """Make the message deliverable again after ``delay`` seconds.

        TEMPLATE: optional; without it the core keeps the message in the worker's memory until
        the delay is over, which suits only servers that never redeliver a live consumer's
        messages on their own.
        """
        s = self.server
        with s.cond:
            entry = s.unacked.pop(delivery.tag, None)
            if entry is not None:
                queue, body = entry
                heapq.heappush(s.delayed, (time.time() + delay, next(s.ids), queue, body))
            s.cond.notify_all()

    def _dead_letter(self, delivery: Delivery) -> None:
        """Drop the message (``nack(requeue=False)``).

        TEMPLATE: move it to your server's dead letters if it has any (and set
        ``supports_dead_letters``).
        """
        with self.server.cond:
            self.server.unacked.pop(delivery.tag, None)

    def purge(self, queue: str | None = None) -> int:
        """Delete the waiting messages of ``queue``; returns how many."""
        with self.server.cond:
            q = self.server.ready.pop(queue or self.default_queue, None)
            return len(q) if q else 0

    def close(self) -> None:
        """Release the connection (idempotent)."""
        super().close()
        self._server = None
