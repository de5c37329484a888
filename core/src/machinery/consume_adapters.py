"""Variants of the consume template (:class:`~machinery.consume.PollingBroker`) for client
libraries that do not answer a fetch:

- :class:`PushBroker`, for clients that push messages to a callback (AMQP's
  ``basic_consume``): the plugin opens a subscription that puts deliveries into an
  :class:`Inbox` the core reads;
- :class:`AsyncPollingBroker`, for asyncio-only clients (nats-py): the primitives are
  coroutines run on a private :class:`EventLoopThread`.
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import abstractmethod
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, final

from machinery.consume import PollingBroker
from machinery.errors import BrokerConnectionError
from machinery.interfaces import Delivery

if TYPE_CHECKING:
    import asyncio

    from machinery.config import Config

__all__ = ["AsyncPollingBroker", "EventLoopThread", "Inbox", "PushBroker", "Subscription"]

log = logging.getLogger("machinery.consume")

T = TypeVar("T")


class Inbox:
    """Where a push subscription (:meth:`PushBroker._subscribe`) puts what it receives. Any
    thread may call :meth:`put` and :meth:`fail`."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._error: BaseException | None = None

    def put(self, delivery: Delivery) -> None:
        """Hand one received message to the consumer."""
        self._q.put(delivery)

    def fail(self, error: BaseException) -> None:
        """Report that the subscription ended with ``error``: a
        :class:`~machinery.errors.BrokerConnectionError` makes the core back off and subscribe
        again; any other error ends ``consume`` with it."""
        self._error = error
        self._q.put(None)  # wake a waiting fetch

    def get(self, max_n: int, wait: float) -> list[Delivery]:
        """Up to ``max_n`` messages, waiting at most ``wait`` seconds for the first.

        :raises BaseException: what :meth:`fail` reported.
        """
        out: list[Delivery] = []
        try:
            item = self._q.get(timeout=wait) if wait > 0 else self._q.get_nowait()
            while True:
                if item is not None:
                    out.append(item)
                if len(out) >= max_n:
                    break
                item = self._q.get_nowait()
        except queue.Empty:
            pass
        if not out and self._error is not None:
            raise self._error
        return out

    def drain(self) -> list[Delivery]:
        """Everything received and not yet taken."""
        out: list[Delivery] = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return out
            if item is not None:
                out.append(item)


class Subscription(Protocol):
    """What :meth:`PushBroker._subscribe` returns."""

    def cancel(self) -> None:
        """Stop receiving (without waiting for the server). Messages received but not taken
        from the inbox are given back by the core; ones that still arrive after this must come
        back on their own (the server redelivers what a closed channel held)."""


class PushBroker(PollingBroker):
    """A :class:`PollingBroker` for client libraries that push messages to a callback (AMQP's
    ``basic_consume``, streaming pulls), instead of answering a fetch.

    A subclass implements :meth:`_subscribe` in place of :meth:`_fetch`: the core opens one
    subscription per queue while at least one ``consume`` of it runs (with that consume's
    ``prefetch``, for the server-side limit such as ``basic.qos``), takes what the
    subscription puts into its :class:`Inbox`, and cancels it when the last ``consume`` of the
    queue ends, giving back what it received and did not hand out. A subscription that fails
    with a :class:`~machinery.errors.BrokerConnectionError` is opened again after the core's
    back-off. ``_ack``, ``_release``, ``_dead_letter`` (and optionally ``_defer``, ``_extend``)
    are as for any :class:`PollingBroker`.
    """

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self.__subs_lock = threading.Lock()
        #: queue -> (inbox, subscription or None while failed, prefetch, consumers)
        self.__subs: dict[str, list[Any]] = {}

    @abstractmethod
    def _subscribe(self, queue: str, prefetch: int, inbox: Inbox) -> Subscription:
        """Start receiving ``queue``'s messages into ``inbox`` (:meth:`Inbox.put`), at most
        ``prefetch`` unacknowledged at a time where the server can limit it; report the end of
        the subscription with :meth:`Inbox.fail`.

        :raises machinery.errors.BrokerConnectionError: the broker cannot be reached (the core
            backs off and tries again).
        """

    def _consume_started(self, queue: str, prefetch: int) -> None:
        with self.__subs_lock:
            entry = self.__subs.get(queue)
            if entry is None:
                self.__subs[queue] = [Inbox(), None, prefetch, 1]
            else:
                entry[3] += 1

    def _consume_ended(self, queue: str) -> None:
        with self.__subs_lock:
            entry = self.__subs.get(queue)
            if entry is None:
                return
            entry[3] -= 1
            if entry[3] > 0:
                return
            del self.__subs[queue]
        inbox, sub = entry[0], entry[1]
        if sub is not None:
            sub.cancel()
        rest = inbox.drain()
        if rest:
            try:
                self._release(rest)
            except Exception as exc:  # noqa: BLE001 - they come back after the redelivery timeout
                log.warning("could not give back %d message(s) on stop: %s", len(rest), exc)

    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        """What the queue's subscription received (opening it first when needed)."""
        with self.__subs_lock:
            entry = self.__subs.get(queue)
            if entry is None:  # a fetch outside consume: one consumer of its own
                entry = self.__subs[queue] = [Inbox(), None, max_n, 1]
            if entry[1] is None:
                entry[0] = Inbox()
                entry[1] = self._subscribe(queue, entry[2], entry[0])
            inbox: Inbox = entry[0]
        try:
            return inbox.get(max_n, wait)
        except BaseException:
            with self.__subs_lock:
                failed, entry[1] = entry[1], None
            if failed is not None:
                failed.cancel()
            raise


class EventLoopThread:
    """A private asyncio event loop running in a daemon thread, for asyncio-only clients.

    :meth:`run` submits a coroutine from any other thread and waits for its result. The loop
    starts on first use and stops in :meth:`close`.
    """

    def __init__(self, name: str = "machinery-loop") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop (started on first use)."""
        import asyncio  # here, so that a broker on the template does not load asyncio

        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name=self.name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception).

        :raises RuntimeError: called from the loop's own thread (it would wait for itself).
        :raises TimeoutError: ``timeout`` seconds passed first (the coroutine is cancelled).
        """
        import asyncio
        import concurrent.futures

        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(f"{self.name}: run() called from the loop's own thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            fut.cancel()
            raise TimeoutError(f"{self.name}: no result within {timeout}s") from None

    def close(self) -> None:
        """Stop the loop and join its thread. Idempotent."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or loop.is_closed():
            return
        import asyncio

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if thread is not threading.current_thread():
            try:
                asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(5)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()


class AsyncPollingBroker(PollingBroker):
    """A :class:`PollingBroker` whose primitives are coroutines, run on a private event loop
    thread (:attr:`loop`), for client libraries that are asyncio-only (nats-py...).

    Implement :meth:`_afetch`, :meth:`_aack`, :meth:`_arelease`, :meth:`_adead_letter` and
    ``publish`` (with ``self.loop.run(...)``), optionally :meth:`_adefer`, :meth:`_aextend` and
    :meth:`_aclose` (the connection's end, run on the loop before it stops).
    """

    #: Seconds any one primitive may take before it counts as a connection error.
    call_timeout: ClassVar[float] = 30.0

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        #: The event loop thread the coroutines run on.
        self.loop = EventLoopThread(f"machinery-{type(self).__name__}")

    def _call(self, coro: Coroutine[Any, Any, T], what: str, timeout: float | None = None) -> T:
        """Run ``coro`` on :attr:`loop`, translating :attr:`connection_errors` and timeouts
        into :class:`~machinery.errors.BrokerConnectionError`."""
        try:
            with self.translate_errors(what):
                return self.loop.run(coro, self.call_timeout if timeout is None else timeout)
        except TimeoutError as exc:
            raise BrokerConnectionError(f"{type(self).__name__}: {what} timed out") from exc

    @abstractmethod
    async def _afetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        """:meth:`PollingBroker._fetch`, as a coroutine."""

    @abstractmethod
    async def _aack(self, delivery: Delivery) -> None:
        """:meth:`PollingBroker._ack`, as a coroutine."""

    @abstractmethod
    async def _arelease(self, deliveries: Sequence[Delivery]) -> None:
        """:meth:`PollingBroker._release`, as a coroutine."""

    @abstractmethod
    async def _adead_letter(self, delivery: Delivery) -> None:
        """:meth:`PollingBroker._dead_letter`, as a coroutine."""

    async def _adefer(self, delivery: Delivery, delay: float) -> None:
        """:meth:`PollingBroker._defer`, as a coroutine (optional)."""
        raise NotImplementedError

    async def _aextend(self, deliveries: Sequence[Delivery]) -> None:
        """:meth:`PollingBroker._extend`, as a coroutine (optional)."""
        raise NotImplementedError

    async def _aclose(self) -> None:
        """Close the client's connection (run on the loop by :meth:`close`)."""

    @final
    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        return self._call(self._afetch(queue, max_n, wait), f"fetch from {queue!r}", timeout=wait + self.call_timeout)

    @final
    def _ack(self, delivery: Delivery) -> None:
        self._call(self._aack(delivery), "ack")

    @final
    def _release(self, deliveries: Sequence[Delivery]) -> None:
        self._call(self._arelease(deliveries), "release")

    @final
    def _dead_letter(self, delivery: Delivery) -> None:
        self._call(self._adead_letter(delivery), "dead-letter")

    @final
    def _defer(self, delivery: Delivery, delay: float) -> None:
        self._call(self._adefer(delivery, delay), "defer")

    @final
    def _extend(self, deliveries: Sequence[Delivery]) -> None:
        self._call(self._aextend(deliveries), "extend")

    def _implements(self, name: str) -> bool:
        """``_defer``/``_extend`` count as implemented when their coroutine twins are."""
        twin = f"_a{name[1:]}"
        if not hasattr(AsyncPollingBroker, twin):  # no coroutine twin (``_ordering_key``)
            return super()._implements(name)
        return getattr(type(self), twin) is not getattr(AsyncPollingBroker, twin)

    def close(self) -> None:
        """Stop the template's threads, close the connection on the loop, stop the loop."""
        super().close()
        if self.loop._loop is not None:
            try:
                self.loop.run(self._aclose(), self.call_timeout)
            except Exception as exc:  # noqa: BLE001 - closing must not raise
                log.warning("%s: close failed: %s", type(self).__name__, exc)
        self.loop.close()
