"""The consume loop brokers share: :class:`PollingBroker` (and, in
:mod:`machinery.consume_adapters`, :class:`~machinery.consume_adapters.PushBroker` for clients
that push to a callback and :class:`~machinery.consume_adapters.AsyncPollingBroker` for
asyncio-only ones).

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
  :meth:`PollingBroker._extend` (keep the messages a live consumer holds from coming back),
  :meth:`PollingBroker._give_back` (what ``consume`` fetched and did not hand out, when that is
  not a plain :meth:`PollingBroker._release`) and :meth:`PollingBroker._reconnect`.

A client library that pushes messages to a callback instead (AMQP's ``basic_consume``) uses
:class:`~machinery.consume_adapters.PushBroker`, which implements ``_fetch`` over a
subscription the plugin opens and an inbox the core reads.

The core then owns ``consume``, ``ack`` and ``nack``:

- ``consume`` notices ``stop`` within :attr:`PollingBroker.fetch_wait` (1 s), never holds more
  than ``prefetch`` messages (handed out and unacknowledged, plus fetched and waiting; only
  those waiting where the broker sets :attr:`PollingBroker.prefetch_read_ahead`), backs
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
import threading
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar, final

from machinery.errors import BrokerAuthenticationError, BrokerConnectionError
from machinery.interfaces import Broker, Delivery

if TYPE_CHECKING:
    from machinery.config import Config

__all__ = ["PollingBroker", "eta_of"]

log = logging.getLogger("machinery.consume")


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
    #: Whether ``prefetch`` bounds only the messages fetched and waiting in the consumer (a
    #: read-ahead; the caller bounds what it has been handed, as the worker does with its task
    #: slots) instead of those plus the ones handed out and unacknowledged. Set by a broker whose
    #: fetch is a round trip it wants to share: counting handed-out messages makes most fetches
    #: of a busy worker take one message (Redis: up to ``prefetch`` per ``LMOVE`` script).
    prefetch_read_ahead: ClassVar[bool] = False
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

        Called for ``nack(requeue=True)`` and, unless :meth:`_give_back` says otherwise, for what
        ``consume`` fetched but did not hand out.
        """

    @abstractmethod
    def _dead_letter(self, delivery: Delivery) -> None:
        """Take a message out of its queue for good (``nack(requeue=False)``): move it to the
        broker's dead letters where there are any, else drop it."""

    def _give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Give back, when ``consume`` ends, the messages it fetched and did not hand out (in the
        order fetched, those held for their ETA last). Optional: :meth:`_release` by default.

        For a broker whose :meth:`_release` puts a message behind the others (Redis requeues at
        the queue's tail, as Go does) while messages never handed out should keep their place.
        """
        self._release(deliveries)

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
                # Held: handed out and not settled, plus fetched and waiting here (or, for a
                # read-ahead, only those waiting: the buffer is empty here but for ordering keys).
                held = len(buffer) + len(due) if self.prefetch_read_ahead else self._held_count(queue)
                want = max(1, cap - held)
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
                try:
                    self.give_back(rest)
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

    @final
    def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Return messages never started through :meth:`_give_back` (Redis: to the head of the
        queue, in order): what a stopping worker read ahead, and what ``consume`` fetched and
        did not hand out."""
        for d in deliveries:
            self.__settling(d)
        if deliveries:
            self._give_back(list(deliveries))

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
