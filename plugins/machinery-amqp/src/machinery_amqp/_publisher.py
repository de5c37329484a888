"""A confirm-mode publisher that owns one RabbitMQ connection in a dedicated I/O thread.

pika connections are not thread-safe, so every producer thread hands its messages to this
thread (``IOLoop.add_callback_threadsafe``) and waits for the broker's confirms. Messages from
many threads, and whole batches, are pipelined on one channel: a batch of N messages costs one
round trip, not N.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions as pex
from pika.adapters.select_connection import IOLoop, SelectConnection

from machinery.plugin import BrokerConnectionError, BrokerError, PublishError

from .transport import CONNECTION_ERRORS, describe

if TYPE_CHECKING:
    from pika.channel import Channel

__all__ = ["Outgoing", "Publisher", "Unroutable"]

log = logging.getLogger("machinery.amqp")


class Unroutable(PublishError):
    """RabbitMQ returned a mandatory message: no queue is bound for its routing key."""


@dataclass(eq=False)
class Outgoing:
    """One message to publish and, once done, its outcome."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    task_uuid: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    returned: bool = False

    def resolve(self, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    def fresh(self) -> Outgoing:
        """A copy to publish again."""
        return Outgoing(self.exchange, self.routing_key, self.body, self.properties, self.task_uuid)


class Publisher:
    """Publishes with confirms through a connection owned by one daemon I/O thread."""

    def __init__(self, params: list[pika.URLParameters]) -> None:
        self._params = params
        self._lock = threading.Lock()
        self._ioloop: IOLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        # The attributes below are touched only by the I/O thread.
        self._conn: SelectConnection | None = None
        self._ch: Channel | None = None
        self._ready = False
        self._connecting = False
        self._waiting: list[Outgoing] = []
        self._unconfirmed: dict[int, Outgoing] = {}
        self._seq = 0

    # -- caller side ------------------------------------------------------------------------------

    def publish(self, items: list[Outgoing], timeout: float) -> list[Outgoing]:
        """Publish ``items`` and wait for every confirm; returns the items that failed."""
        loop = self._loop()
        loop.add_callback_threadsafe(partial(self._submit, items))
        deadline = time.monotonic() + (timeout or 3600.0)
        for it in items:
            if not it.done.wait(max(0.0, deadline - time.monotonic())):
                it.resolve(PublishError(f"RabbitMQ did not confirm the message within {timeout:g}s", it.task_uuid))
        return [it for it in items if it.error is not None]

    def close(self) -> None:
        """Close the connection and stop the I/O thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._ioloop, self._thread
        if loop is None or thread is None:
            return
        try:
            loop.add_callback_threadsafe(self._shutdown)
        except Exception:  # noqa: BLE001 - the loop is already gone
            return
        thread.join(5.0)
        if not thread.is_alive():
            loop.close()

    def _loop(self) -> IOLoop:
        with self._lock:
            if self._closed:
                raise BrokerError("the AMQP broker is closed")
            if self._thread is None or not self._thread.is_alive():
                self._ioloop = IOLoop()
                self._thread = threading.Thread(target=self._ioloop.start, name="machinery-amqp-publisher", daemon=True)
                self._thread.start()
            assert self._ioloop is not None
            return self._ioloop

    # -- I/O thread -------------------------------------------------------------------------------

    def _submit(self, items: list[Outgoing]) -> None:
        if self._ready:
            self._send(items)
            return
        self._waiting.extend(items)
        if not self._connecting:
            if self._conn is not None and self._conn.is_open:
                self._connecting = True
                self._conn.channel(on_open_callback=self._on_channel)
            else:
                self._connect(0)

    def _connect(self, index: int) -> None:
        self._connecting = True
        SelectConnection(
            self._params[index],
            on_open_callback=self._on_open,
            on_open_error_callback=partial(self._on_open_error, index),
            on_close_callback=self._on_closed,
            custom_ioloop=self._ioloop,
        )

    def _on_open_error(self, index: int, _conn: Any, exc: BaseException) -> None:
        if index + 1 < len(self._params) and not isinstance(exc, pex.ProbableAuthenticationError):
            self._connect(index + 1)
            return
        self._connecting = False
        err = BrokerConnectionError(f"cannot connect to RabbitMQ at {describe(self._params)}: {exc!r}")
        waiting, self._waiting = self._waiting, []
        for it in waiting:
            it.resolve(err)

    def _on_open(self, conn: SelectConnection) -> None:
        self._conn = conn
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, ch: Channel) -> None:
        self._ch = ch
        self._seq = 0
        ch.add_on_close_callback(self._on_channel_closed)
        ch.add_on_return_callback(self._on_return)
        ch.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Any) -> None:
        self._ready = True
        self._connecting = False
        waiting, self._waiting = self._waiting, []
        self._send(waiting)

    def _send(self, items: list[Outgoing]) -> None:
        ch = self._ch
        for it in items:
            try:
                assert ch is not None
                ch.basic_publish(it.exchange, it.routing_key, it.body, it.properties, mandatory=True)
            except CONNECTION_ERRORS as exc:
                it.resolve(BrokerConnectionError(f"cannot publish to RabbitMQ: {exc!r}"))
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. a header pika cannot encode
                it.resolve(PublishError(f"cannot publish the message: {exc!r}", it.task_uuid))
                continue
            self._seq += 1
            self._unconfirmed[self._seq] = it

    def _on_return(self, _ch: Any, method: Any, props: pika.BasicProperties, _body: bytes) -> None:
        for it in self._unconfirmed.values():
            if not it.returned and it.properties.message_id == props.message_id:
                it.returned = True
                log.debug("message %s returned: %s", props.message_id, method.reply_text)
                break

    def _on_confirm(self, frame: Any) -> None:
        m = frame.method
        acked = isinstance(m, pika.spec.Basic.Ack)
        tag = m.delivery_tag
        if m.multiple:
            done = []
            for t in self._unconfirmed:
                if t > tag:
                    break
                done.append(t)
        else:
            done = [tag]
        for t in done:
            it = self._unconfirmed.pop(t, None)
            if it is None:
                continue
            if not acked:
                it.resolve(PublishError("RabbitMQ refused the message (basic.nack)", it.task_uuid))
            elif it.returned:
                it.resolve(Unroutable(f"no queue is bound for routing key {it.routing_key!r}", it.task_uuid))
            else:
                it.resolve()

    def _fail_unconfirmed(self, err: BaseException) -> None:
        pending, self._unconfirmed = self._unconfirmed, {}
        for it in pending.values():
            it.resolve(err)

    def _on_channel_closed(self, _ch: Any, reason: BaseException) -> None:
        self._ready = False
        self._ch = None
        if isinstance(reason, pex.ChannelClosedByBroker):
            self._fail_unconfirmed(PublishError(f"RabbitMQ closed the publishing channel: {reason.reply_text}"))
            if self._waiting and self._conn is not None and self._conn.is_open:
                self._connecting = True
                self._conn.channel(on_open_callback=self._on_channel)
            else:
                self._connecting = False
        else:
            self._fail_unconfirmed(BrokerConnectionError(f"connection to RabbitMQ lost before the confirm: {reason!r}"))

    def _on_closed(self, _conn: Any, reason: BaseException) -> None:
        self._ready = False
        self._connecting = False
        self._conn = None
        self._ch = None
        err = BrokerConnectionError(f"connection to RabbitMQ lost before the confirm: {reason!r}")
        self._fail_unconfirmed(err)
        waiting, self._waiting = self._waiting, []
        for it in waiting:
            it.resolve(err)
        if self._closed:
            assert self._ioloop is not None
            self._ioloop.stop()
        else:
            log.warning("publisher connection to RabbitMQ closed: %r; reconnecting on the next publish", reason)

    def _shutdown(self) -> None:
        assert self._ioloop is not None
        if self._conn is not None and (self._conn.is_open or self._conn.is_opening):
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                self._ioloop.stop()
            else:
                self._ioloop.call_later(3.0, self._ioloop.stop)
        else:
            self._ioloop.stop()
