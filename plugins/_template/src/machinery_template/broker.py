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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from machinery.config import parse_options, redact_url
from machinery.errors import ConfigError
from machinery.interfaces import Broker, Delivery

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.signature import Signature

__all__ = ["TemplateBroker", "TemplateOptions", "server_name"]


@dataclass(frozen=True)
class TemplateOptions:
    """The ``template:`` config section, parsed with :func:`machinery.config.parse_options`
    (which reports unknown keys and bad values by name).

    TEMPLATE: one field per option, each with a default; use Go Machinery's key names when Go
    has the option (``max_idle``, ``visibility_timeout``...).

    :param poll_interval: longest wait, in seconds, for a message before ``consume`` checks
        ``stop`` again.
    """

    poll_interval: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.poll_interval <= 1:
            raise ConfigError("template.poll_interval", "must be > 0 and <= 1 (consume must notice stop within 1 s)")


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


class TemplateBroker(Broker):
    """Broker for ``template://<name>`` URLs.

    Safe to use from several threads: ``publish`` from producers, ``ack``/``nack`` from task
    threads while ``consume`` runs in the consumer thread.
    """

    # TEMPLATE: declare what your server really does; the core and the suite read these.
    supports_native_delay: ClassVar[bool] = False  # the worker re-schedules early ETAs with nack(delay)
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

    def consume(self, queue: str, *, prefetch: int, stop: threading.Event) -> Iterator[Delivery]:
        """Yield messages of ``queue`` until ``stop`` is set, waiting at most ``poll_interval``.

        TEMPLATE: use your server's blocking receive with a short timeout (never sleep in a loop
        when a blocking call exists); handle connection loss here (log, reconnect with back-off).
        """
        s = self.server
        while not stop.is_set():
            item = None
            with s.cond:
                self._promote_due(s)
                q = s.ready.get(queue)
                if q:
                    msg_id, body = q.popleft()
                    s.unacked[msg_id] = (queue, body)
                    item = Delivery(body=body, queue=queue, tag=msg_id)
                else:
                    s.cond.wait(self.options.poll_interval)
            if item is not None:
                yield item

    @staticmethod
    def _promote_due(s: _ExampleServer) -> None:
        now = time.time()
        while s.delayed and s.delayed[0][0] <= now:
            _, msg_id, queue, body = heapq.heappop(s.delayed)
            s.ready.setdefault(queue, deque()).append((msg_id, body))

    def ack(self, delivery: Delivery) -> None:
        """Remove the message for good (called after the task's final state is stored)."""
        with self.server.cond:
            self.server.unacked.pop(delivery.tag, None)

    def nack(self, delivery: Delivery, *, requeue: bool = True, delay: float = 0.0) -> None:
        """Make the message deliverable again (after ``delay`` seconds), or drop it.

        TEMPLATE: with ``requeue=False`` move it to a dead-letter queue if your server has one.
        """
        s = self.server
        with s.cond:
            entry = s.unacked.pop(delivery.tag, None)
            if entry is None or not requeue:
                return
            queue, body = entry
            if delay > 0:
                heapq.heappush(s.delayed, (time.time() + delay, next(s.ids), queue, body))
            else:
                s.ready.setdefault(queue, deque()).append((next(s.ids), body))
            s.cond.notify_all()

    def purge(self, queue: str | None = None) -> int:
        """Delete the waiting messages of ``queue``; returns how many."""
        with self.server.cond:
            q = self.server.ready.pop(queue or self.default_queue, None)
            return len(q) if q else 0

    def close(self) -> None:
        """Release the connection (idempotent)."""
        self._server = None
