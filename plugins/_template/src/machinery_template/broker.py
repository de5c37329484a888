"""``TemplateBroker``: moves task messages between producers and workers.

TEMPLATE: a skeleton. The core's ``PollingBroker`` owns ``consume``, ``ack`` and ``nack``
(stopping within ``fetch_wait``, prefetch, back-off on ``BrokerConnectionError``, ETA emulation
when ``supports_native_delay`` is False, giving back what was fetched and not handed out): you
implement the primitives below with your client (``self.client``), keeping each contract (the
docstrings here and in ``machinery.plugin.PollingBroker``). ``AsyncPollingBroker`` suits an
asyncio-only client. The reference to read alongside is the core's ``memory://`` broker
(``machinery/builtin/memory/broker.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.plugin import PollingBroker
from machinery_template import ENV_OPTIONS
from machinery_template.transport import TemplateTransport

if TYPE_CHECKING:
    from machinery.plugin import Config, Delivery, Signature

__all__ = ["TemplateBroker"]


class TemplateBroker(PollingBroker):
    """Broker for ``template://`` URLs.

    Thread-safe: ``publish`` runs in producer threads and ``ack``/``nack`` in task threads
    while ``consume`` runs in the consumer thread.

    :param url: the URL.
    :param config: the core configuration.
    :param transport: the transport handing it out (None: the shared one of ``url`` and ``config``).
    """

    # TEMPLATE: declare what your server really does; the core and the suite read these, and a
    # capability declared False is a stated skip in the suite, never a failure.
    supports_native_delay: ClassVar[bool] = False  # the server holds a message until its ETA
    supports_priority: ClassVar[bool] = False
    supports_pending_listing: ClassVar[bool] = False  # pending_tasks() works
    supports_delayed_listing: ClassVar[bool] = False  # delayed_tasks() works
    supports_purge: ClassVar[bool] = False  # purge() works
    supports_dead_letters: ClassVar[bool] = False  # list_dead_letters()/remove_dead_letter() work
    redelivers_unacked: ClassVar[bool] = True  # a dead consumer's messages come back...
    redelivery_timeout: ClassVar[float] = 30.0  # ...after at most this long
    config_section: ClassVar[str | None] = "template"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS

    def __init__(self, url: str, config: Config, *, transport: TemplateTransport | None = None) -> None:
        super().__init__(url, config)
        held = TemplateTransport.attach(self, url, config, transport)
        self.transport = held
        self.options = held.options

    @property
    def client(self) -> Any:
        """The transport's connection (opened on first use)."""
        assert self.transport is not None
        return self.transport.connection_for(self)

    def publish(self, body: bytes, signature: Signature) -> None:
        """Send ``body`` (Go Machinery's JSON, byte for byte) to ``self.queue_for(signature)``;
        return only once the server has accepted it.

        :raises PublishError: the server refused it.
        :raises BrokerConnectionError: the server cannot be reached.
        """
        raise NotImplementedError("TEMPLATE: TemplateBroker.publish: send the message with your client")

    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        """Take up to ``max_n`` messages of ``queue``, waiting at most ``wait`` seconds; a taken
        message stays on the server, invisible to others, until ``_ack`` (at-least-once).

        Use your server's blocking receive with ``wait`` as its timeout (never sleep in a loop
        when a blocking call exists); return ``Delivery(body=..., queue=queue, tag=...)``, the
        tag being what ``_ack``/``_release`` need.

        :raises BrokerConnectionError: the connection was lost (the core backs off and calls
            ``_reconnect``).
        """
        raise NotImplementedError("TEMPLATE: TemplateBroker._fetch: receive with your client")

    def _ack(self, delivery: Delivery) -> None:
        """Delete the message for good (called after the task's final state is stored)."""
        raise NotImplementedError("TEMPLATE: TemplateBroker._ack: delete the message")

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        """Make the messages deliverable again at once (a consumer giving back what it did not run)."""
        raise NotImplementedError("TEMPLATE: TemplateBroker._release: make the messages visible again")

    def _dead_letter(self, delivery: Delivery) -> None:
        """``nack(requeue=False)``: move the message to your dead letters (and set
        ``supports_dead_letters``), or drop it."""
        raise NotImplementedError("TEMPLATE: TemplateBroker._dead_letter: dead-letter or drop the message")

    # TEMPLATE: optional primitives, once the above work (see PollingBroker's docstrings):
    # _defer(delivery, delay) (give back, deliverable after a delay: without it the core holds
    # early ETAs in the worker), _extend(deliveries) with extend_interval (renew leases),
    # _reconnect(), publish_many(items) (one round trip), pending_tasks, delayed_tasks, purge,
    # list_dead_letters / remove_dead_letter.

    def close(self) -> None:
        """Stop the core's timers and release the transport (its connection is closed with the
        last role). Idempotent."""
        super().close()
        if self.transport is not None:
            self.transport.release(self)
