"""The consume loop brokers share: :class:`PollingBroker`, and :class:`AsyncPollingBroker` for
asyncio-only client libraries.

Every broker used to write the same ``consume`` generator: a buffer of messages taken but not
yet handed out, ``prefetch`` minus what is held, a look at ``stop`` every second, back-off and
reconnection after a connection error, ETA handling, and giving back what was not handed out
when the generator ends. Here it is written once (kombu's virtual channel, in small). A broker
implements a few primitives instead:

- :meth:`PollingBroker._fetch` takes up to ``max_n`` messages, waiting at most ``wait`` seconds;
- :meth:`PollingBroker._ack` removes one for good;
- :meth:`PollingBroker._release` gives messages back at once;
- :meth:`PollingBroker._dead_letter` drops one (to the dead letters, where the broker has them);
- optionally :meth:`PollingBroker._defer` (give back, deliverable after a delay),
  :meth:`PollingBroker._extend` (keep the messages a live consumer holds from coming back) and
  :meth:`PollingBroker._reconnect`.

A client library that pushes messages to a callback instead (AMQP's ``basic_consume``) uses
:class:`PushBroker`, which implements ``_fetch`` over a subscription the plugin opens
(:meth:`PushBroker._subscribe`) and an :class:`Inbox` the core reads.

The core then owns ``consume``, ``ack`` and ``nack``:

- ``consume`` notices ``stop`` within :attr:`PollingBroker.fetch_wait` (1 s), never holds more
  than ``prefetch`` messages (handed out and unacknowledged, plus fetched and waiting), backs
  off from 0.1 s to 10 s on :class:`~machinery.errors.BrokerConnectionError` (or one of the
  client's :attr:`PollingBroker.connection_errors`) and calls :meth:`PollingBroker._reconnect`,
  and gives back every message it fetched but did not hand out when it ends;
- where the broker cannot hold a message until its ETA (``supports_native_delay`` False, or
  :attr:`PollingBroker.eta_in_consumer` True), a fetched message that is not due is never
  handed out early: one due within :attr:`PollingBroker.eta_hold` seconds is kept here and
  handed out when due, a later one is deferred to its ETA;
- ``nack(delay=...)`` uses :meth:`PollingBroker._defer`, or, for a broker without it, keeps the
  message (unacknowledged) in this process and releases it when the delay is over;
- a heartbeat thread calls :meth:`PollingBroker._extend` every
  :attr:`PollingBroker.extend_interval` seconds with the messages fetched and not yet
  acknowledged or given back (handed out, or waiting in the consumer), when the broker
  implements it; settling a message (ack, nack, give back) waits for an ``_extend`` call
  covering it to end, so a heartbeat never overwrites a settle.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import queue
import threading
import time
from abc import abstractmethod
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, final

from machinery.errors import BrokerAuthenticationError, BrokerConnectionError
from machinery.interfaces import Broker, Delivery

if TYPE_CHECKING:
    import asyncio

    from machinery.config import Config

__all__ = ["AsyncPollingBroker", "EventLoopThread", "Inbox", "PollingBroker", "PushBroker", "Subscription", "eta_of"]

log = logging.getLogger("machinery.consume")

T = TypeVar("T")


def eta_of(body: bytes) -> float | None:
    """The top-level ETA of a signature body as a Unix time, or None (no ETA, or unreadable).

    Go writes ``"ETA"`` before any nested signature, so the first ``"ETA":`` is the top-level
    one; only when it is not ``null`` is the body parsed. An unreadable body gives None: the
    worker reports malformed messages.
    """
    i = body.find(b'"ETA":')
    if i < 0 or body.startswith(b"null", i + 6):
        return None
    import json

    from machinery.signature import parse_time

    try:
        obj = json.loads(body)
        eta = obj.get("ETA") if isinstance(obj, dict) else None
        return parse_time(eta).timestamp() if isinstance(eta, str) else None
    except (ValueError, UnicodeDecodeError):
        return None


class PollingBroker(Broker):
    """A :class:`~machinery.interfaces.Broker` whose ``consume``, ``ack`` and ``nack`` are the
    core's, built on the primitives this class declares (see the module documentation).

    A subclass implements :meth:`publish`, :meth:`_fetch`, :meth:`_ack`, :meth:`_release` and
    :meth:`_dead_letter`, and calls ``super().close()`` from its ``close``.
    """

    #: Longest a single :meth:`_fetch` may wait, in seconds: the bound on noticing ``stop``.
    fetch_wait: ClassVar[float] = 1.0
    #: Most messages asked of one :meth:`_fetch` (the broker's batch limit).
    fetch_max: ClassVar[int] = 256
    #: Back-off after a connection error: first and longest wait, in seconds.
    backoff_initial: ClassVar[float] = 0.1
    backoff_max: ClassVar[float] = 10.0
    #: Without native delay: fetched messages due within this many seconds are held by the
    #: consumer until due; later ones are deferred (:meth:`_defer`) to their ETA.
    eta_hold: ClassVar[float] = 1.0
    #: Seconds between two :meth:`_extend` calls (None: no heartbeat); may be set per instance
    #: (from the broker's options) before the first fetch returns, and changed later (each beat
    #: reads it).
    extend_interval: float | None = None
    #: Whether ``consume`` holds back messages not yet due (see the module documentation).
    #: None: when the broker has no native delay. True for a broker that declares native delay
    #: but meets it in the consumer (SQS hides an early message again until its ETA).
    eta_in_consumer: ClassVar[bool | None] = None
    #: Client-library exceptions that mean "connection trouble": ``consume`` backs off and
    #: reconnects on them, and :meth:`translate_errors` turns them into
    #: :class:`~machinery.errors.BrokerConnectionError`.
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self.__lock = threading.Lock()
        #: Notified when an :meth:`_extend` call ends; a settle waits for the one covering it.
        self.__extended = threading.Condition(self.__lock)
        self.__extending: set[int] = set()
        #: Notified when a message is settled (a consumer waiting on an ordering key wakes).
        self.__settled = threading.Condition(self.__lock)
        #: Ordering keys of messages handed out and not settled: id -> (queue, key), and counts.
        self.__keyed: dict[int, tuple[str, str]] = {}
        self.__busy: collections.Counter[tuple[str, str]] = collections.Counter()
        self.__held: dict[int, Delivery] = {}
        self.__timers: dict[int, tuple[threading.Timer, Delivery]] = {}
        self.__closed = threading.Event()
        self.__heartbeat: threading.Thread | None = None

    # -- primitives ---------------------------------------------------------------------------

    @abstractmethod
    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        """Take up to ``max_n`` (>= 1) messages of ``queue``, waiting at most ``wait`` seconds
        for the first; an empty sequence when none came.

        The messages stay in the broker, unacknowledged, until :meth:`_ack`,
        :meth:`_release`, :meth:`_defer` or :meth:`_dead_letter`; a consumer that dies
        without any of those must let them come back (``redelivery_timeout``).

        :raises machinery.errors.BrokerConnectionError: (or one of :attr:`connection_errors`)
            the broker cannot be reached; the core backs off and calls :meth:`_reconnect`.
        """

    @abstractmethod
    def _ack(self, delivery: Delivery) -> None:
        """Remove a message for good (the task's final state is stored)."""

    @abstractmethod
    def _release(self, deliveries: Sequence[Delivery]) -> None:
        """Give messages back at once, deliverable to any consumer (order need not be kept).

        Called for ``nack(requeue=True)`` and for what ``consume`` fetched but did not hand out.
        """

    @abstractmethod
    def _dead_letter(self, delivery: Delivery) -> None:
        """Take a message out of its queue for good (``nack(requeue=False)``): move it to the
        broker's dead letters where there are any, else drop it."""

    def _defer(self, delivery: Delivery, delay: float) -> None:
        """Give a message back, deliverable only after ``delay`` seconds (> 0).

        Optional: without it the core keeps the message, unacknowledged, in this process and
        calls :meth:`_release` when the delay is over, which only suits brokers that do not
        redeliver a live consumer's messages on their own (or that implement :meth:`_extend`).
        """
        raise NotImplementedError

    def _extend(self, deliveries: Sequence[Delivery]) -> None:
        """Keep messages handed out and not yet acknowledged from being redelivered (renew a
        lease, reset an ack timer). Optional; called every :attr:`extend_interval` seconds."""
        raise NotImplementedError

    def _reconnect(self) -> None:
        """Called after a connection error, before the next :meth:`_fetch`. Optional."""

    def _consume_started(self, queue: str, prefetch: int) -> None:
        """Called when a ``consume`` of ``queue`` starts, before its first fetch. Optional."""

    def _consume_ended(self, queue: str) -> None:
        """Called when a ``consume`` of ``queue`` ends, after it gave back what it held. Optional."""

    def _ordering_key(self, delivery: Delivery) -> str:
        """The message's ordering key, or "" for none. Optional.

        Where implemented, ``consume`` hands out a message with a key only while no other
        message of the same queue and key that it handed out is unsettled (messages of one key
        run one at a time, in the order fetched); the others wait in the consumer, counted
        against ``prefetch``.
        """
        return ""

    # -- error translation --------------------------------------------------------------------

    @contextmanager
    def translate_errors(self, what: str) -> Iterator[None]:
        """Turn :attr:`connection_errors` raised inside into
        :class:`~machinery.errors.BrokerConnectionError` (``what`` names the operation)."""
        try:
            yield
        except self.connection_errors as exc:
            raise BrokerConnectionError(f"{type(self).__name__}: {what} failed: {exc!r}") from exc

    # -- the template -------------------------------------------------------------------------

    def _held_count(self, queue: str) -> int:
        with self.__lock:
            return sum(1 for d in self.__held.values() if d.queue == queue)

    def _held_deliveries(self) -> list[Delivery]:
        """The messages ``consume`` fetched and that are not yet acknowledged or given back
        (handed out, or waiting in the consumer to be)."""
        with self.__lock:
            return list(self.__held.values())

    def __hold(self, delivery: Delivery) -> None:
        with self.__lock:
            self.__held[id(delivery)] = delivery
        if self.extend_interval is not None and self.__heartbeat is None and self._implements("_extend"):
            with self.__lock:
                if self.__heartbeat is None:
                    t = threading.Thread(target=self.__beat, name="machinery-broker-heartbeat", daemon=True)
                    self.__heartbeat = t
                    t.start()

    def __settling(self, delivery: Delivery) -> None:
        """Stop extending ``delivery``, after an :meth:`_extend` call covering it has ended (so
        a heartbeat never overwrites what the settle does, such as a shorter visibility)."""
        key = id(delivery)
        with self.__lock:
            while key in self.__extending:
                self.__extended.wait()
            self.__held.pop(key, None)
            keyed = self.__keyed.pop(key, None)
            if keyed is not None:
                self.__busy[keyed] -= 1
                if self.__busy[keyed] <= 0:
                    del self.__busy[keyed]
            self.__settled.notify_all()

    def __take(self, buffer: collections.deque[Delivery], ordered: bool) -> Delivery | None:
        """The first buffered message that may be handed out now (see :meth:`_ordering_key`)."""
        if not ordered:
            return buffer.popleft()
        blocked: set[str] = set()
        with self.__lock:
            for i, d in enumerate(buffer):
                key = self._ordering_key(d)
                if not key:
                    del buffer[i]
                    return d
                if key in blocked or self.__busy[(d.queue, key)]:
                    blocked.add(key)
                    continue
                del buffer[i]
                self.__keyed[id(d)] = (d.queue, key)
                self.__busy[(d.queue, key)] += 1
                return d
        return None

    def _implements(self, name: str) -> bool:
        """Whether the optional primitive ``name`` (``_defer``, ``_extend``, ``_ordering_key``)
        is implemented."""
        return getattr(type(self), name) is not getattr(PollingBroker, name)

    def __beat(self) -> None:
        while not self.__closed.wait(self.extend_interval or 1.0):
            with self.__lock:
                held = list(self.__held.values())
                self.__extending = {id(d) for d in held}
            if not held:
                continue
            try:
                self._extend(held)
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("could not extend %d held message(s): %s", len(held), exc)
            finally:
                with self.__lock:
                    self.__extending = set()
                    self.__extended.notify_all()

    @final
    def consume(self, queue: str, *, prefetch: int, stop: threading.Event) -> Iterator[Delivery]:
        """Yield messages of ``queue`` until ``stop`` is set (see the module documentation)."""
        buffer: collections.deque[Delivery] = collections.deque()
        due: list[tuple[float, int, Delivery]] = []  # a heap of (ETA, seq, delivery)
        seq = itertools.count()
        backoff = self.backoff_initial
        emulate_eta = not self.supports_native_delay if self.eta_in_consumer is None else self.eta_in_consumer
        ordered = self._implements("_ordering_key")
        cap = min(prefetch, self.fetch_max)
        self._consume_started(queue, prefetch)
        try:
            while not stop.is_set():
                now = time.time()
                while due and due[0][0] <= now:
                    buffer.append(heapq.heappop(due)[2])
                if buffer:
                    d = self.__take(buffer, ordered)
                    if d is not None:
                        yield d
                        continue
                    with self.__lock:  # every buffered message waits for its key
                        if sum(1 for h in self.__held.values() if h.queue == queue) >= cap:
                            self.__settled.wait(self.fetch_wait)
                            continue
                # Held: handed out and not settled, plus fetched and waiting here.
                want = max(1, cap - self._held_count(queue))
                wait = self.fetch_wait if not due else max(0.0, min(self.fetch_wait, due[0][0] - now))
                try:
                    got = self._fetch(queue, want, wait)
                except BrokerAuthenticationError:
                    raise  # not transient: the worker reports it and waits long
                except (BrokerConnectionError, *self.connection_errors) as exc:  # type: ignore[misc]
                    log.warning("%s; fetching from %r again in %.1fs", exc, queue, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    try:
                        self._reconnect()
                    except Exception as again:  # noqa: BLE001 - the next fetch reports it
                        log.warning("%s: reconnect failed: %s", type(self).__name__, again)
                    continue
                backoff = self.backoff_initial
                for d in got:
                    self.__hold(d)  # from the fetch on: counted against prefetch, extended
                    eta = eta_of(d.body) if emulate_eta else None
                    ahead = eta - time.time() if eta is not None else 0.0
                    if eta is None or ahead <= 0:
                        buffer.append(d)
                    elif ahead <= self.eta_hold:
                        heapq.heappush(due, (eta, next(seq), d))
                    else:
                        self.__settling(d)
                        self.__defer(d, ahead)
                if not got and due and wait <= 0:
                    stop.wait(0.001)
        finally:
            rest = list(buffer) + [d for *_, d in due]
            if rest:
                for d in rest:
                    self.__settling(d)
                try:
                    self._release(rest)
                except Exception as exc:  # noqa: BLE001 - they come back after the redelivery timeout
                    log.warning("could not give back %d message(s) on stop: %s", len(rest), exc)
            try:
                self._consume_ended(queue)
            except Exception as exc:  # noqa: BLE001 - ending must not raise over the consumer's own error
                log.warning("%s: ending the consumer of %r failed: %s", type(self).__name__, queue, exc)

    def __defer(self, delivery: Delivery, delay: float) -> None:
        if self._implements("_defer"):
            self._defer(delivery, delay)
            return

        # Kept here, unacknowledged (a crash gives it back), and released when due.
        def due() -> None:
            with self.__lock:
                self.__timers.pop(id(delivery), None)
            try:
                self._release([delivery])
            except Exception as exc:  # noqa: BLE001 - it comes back after the redelivery timeout
                log.warning("could not release a deferred message: %s", exc)

        timer = threading.Timer(delay, due)
        timer.daemon = True
        with self.__lock:
            self.__timers[id(delivery)] = (timer, delivery)
        timer.start()

    @final
    def ack(self, delivery: Delivery) -> None:
        """Remove the message for good (after the task's final state is stored)."""
        self.__settling(delivery)
        self._ack(delivery)

    @final
    def nack(self, delivery: Delivery, *, requeue: bool = True, delay: float = 0.0) -> None:
        """Give the message back (after ``delay`` seconds) or dead-letter it."""
        self.__settling(delivery)
        if not requeue:
            self._dead_letter(delivery)
        elif delay > 0:
            self.__defer(delivery, delay)
        else:
            self._release([delivery])

    def close(self) -> None:
        """Stop the heartbeat and give back at once the messages held for a delay. Idempotent."""
        self.__closed.set()
        with self.__lock:
            timers = list(self.__timers.values())
            self.__timers.clear()
        for t, _ in timers:
            t.cancel()
        if timers:
            try:
                self._release([d for _, d in timers])
            except Exception as exc:  # noqa: BLE001 - they come back after the redelivery timeout
                log.warning("could not give back %d deferred message(s) on close: %s", len(timers), exc)
        hb = self.__heartbeat
        if hb is not None and hb is not threading.current_thread():
            hb.join(timeout=5)
        self.__heartbeat = None


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
