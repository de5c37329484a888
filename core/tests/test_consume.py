"""The core consume template (:mod:`machinery.consume`, :mod:`machinery.consume_adapters`) on
small in-process brokers of its own: stopping, prefetch, back-off and reconnect, release on
stop, ETA emulation, defer (the broker's or the core's), the heartbeat, ordering keys, the push
variant and the asyncio adapter."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import ClassVar

import pytest

from machinery.config import Config
from machinery.consume import PollingBroker, eta_of
from machinery.consume_adapters import AsyncPollingBroker, EventLoopThread, Inbox, PushBroker
from machinery.errors import BrokerConnectionError, BrokerError
from machinery.interfaces import Delivery
from machinery.signature import Signature, encode_signature


class ListBroker(PollingBroker):
    """Ready list + taken set; a fetch fails while ``down`` is set; counts every call."""

    fetch_wait: ClassVar[float] = 0.2

    def __init__(self, url: str = "list://", config: Config | None = None) -> None:
        super().__init__(url, config or Config())
        self.cond = threading.Condition()
        self.ready: list[bytes] = []
        self.taken: list[bytes] = []
        self.acked: list[bytes] = []
        self.dead: list[bytes] = []
        self.asked: list[int] = []
        self.down = False
        self.reconnects = 0
        self.deferred: list[float] = []

    def publish(self, body: bytes, signature: Signature) -> None:
        with self.cond:
            self.ready.append(body)
            self.cond.notify_all()

    def _fetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
        if self.down:
            raise BrokerConnectionError("down")
        with self.cond:
            self.asked.append(max_n)
            if not self.ready:
                self.cond.wait(wait)
            got, self.ready = self.ready[:max_n], self.ready[max_n:]
            self.taken += got
        return [Delivery(body=b, queue=queue) for b in got]

    def _ack(self, delivery: Delivery) -> None:
        with self.cond:
            self.taken.remove(delivery.body)
            self.acked.append(delivery.body)

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        with self.cond:
            for d in deliveries:
                self.taken.remove(d.body)
                self.ready.append(d.body)
            self.cond.notify_all()

    def _dead_letter(self, delivery: Delivery) -> None:
        with self.cond:
            self.taken.remove(delivery.body)
            self.dead.append(delivery.body)

    def _reconnect(self) -> None:
        self.reconnects += 1


class DeferringBroker(ListBroker):
    def _defer(self, delivery: Delivery, delay: float) -> None:
        self.deferred.append(delay)
        threading.Timer(delay, self._release, ([delivery],)).start()


def body(n: int, eta: datetime | None = None) -> bytes:
    return encode_signature(Signature("add", uuid=f"u{n}", eta=eta))


def run(broker: PollingBroker, prefetch: int = 4) -> tuple[threading.Event, Iterator[Delivery]]:
    stop = threading.Event()
    return stop, broker.consume("q", prefetch=prefetch, stop=stop)


def test_stop_noticed_within_fetch_wait_and_unyielded_released() -> None:
    b = ListBroker()
    for i in range(5):
        b.publish(body(i), Signature("add"))
    stop, it = run(b, prefetch=5)
    first = next(it)
    assert len(b.taken) == 5  # one batch of prefetch
    t = threading.Thread(target=lambda: list(it))
    stop.set()
    t0 = time.monotonic()
    t.start()
    t.join(5)
    assert time.monotonic() - t0 < 1.0
    assert b.taken == [first.body]  # the 4 not handed out went back
    assert len(b.ready) == 4
    b.ack(first)
    assert b.acked == [first.body]


def test_give_back_on_stop_is_its_own_primitive() -> None:
    # A broker may put what consume never handed out back otherwise than a nack's release
    # (Redis: the queue head, in order, where a requeue goes to the tail).
    class GivingBack(ListBroker):
        given: list[list[bytes]] = []
        released: list[list[bytes]] = []

        def _release(self, deliveries: Sequence[Delivery]) -> None:
            self.released.append([d.body for d in deliveries])
            super()._release(deliveries)

        def _give_back(self, deliveries: Sequence[Delivery]) -> None:
            self.given.append([d.body for d in deliveries])
            super()._release(deliveries)

    b = GivingBack()
    for i in range(4):
        b.publish(body(i), Signature("add"))
    stop, it = run(b, prefetch=4)
    first = next(it)
    b.nack(first)
    assert b.released == [[body(0)]] and b.given == []
    stop.set()
    assert list(it) == []
    assert b.given == [[body(1), body(2), body(3)]]  # in the order fetched
    assert b.released == [[body(0)]]


def test_prefetch_counts_handed_out_messages_unless_read_ahead() -> None:
    for read_ahead, asked in ((False, [4, 1]), (True, [4, 4])):

        class B(ListBroker):
            prefetch_read_ahead = read_ahead

        b = B()
        for i in range(8):
            b.publish(body(i), Signature("add"))
        stop, it = run(b, prefetch=4)
        handed = [next(it) for _ in range(5)]  # none acknowledged: the fifth needs a second fetch
        assert b.asked == asked, read_ahead
        stop.set()
        assert list(it) == []
        for d in handed:
            b.ack(d)


def test_idle_stop_prompt() -> None:
    b = ListBroker()
    stop, it = run(b)
    out: list[Delivery] = []
    t = threading.Thread(target=lambda: out.extend(it))
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    stop.set()
    t.join(5)
    assert time.monotonic() - t0 <= b.fetch_wait + 0.2 and not out


def test_prefetch_counts_held_messages() -> None:
    b = ListBroker()
    for i in range(10):
        b.publish(body(i), Signature("add"))
    stop, it = run(b, prefetch=3)
    got = [next(it) for _ in range(3)]
    assert b.asked == [3]
    b.ack(got[0])
    next(it)  # one slot free: one asked for
    assert b.asked == [3, 1]
    stop.set()
    list(it)


def test_backoff_and_reconnect_on_connection_error(caplog: pytest.LogCaptureFixture) -> None:
    b = ListBroker()
    b.down = True
    stop, it = run(b)
    out: list[Delivery] = []
    t = threading.Thread(target=lambda: out.extend(it))
    t.start()
    time.sleep(0.5)  # 0.1 + 0.2 + ...
    assert b.reconnects >= 2
    b.down = False
    b.publish(body(1), Signature("add"))
    deadline = time.monotonic() + 5
    while not out and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(5)
    assert [d.body for d in out] == [body(1)]
    assert "again in" in caplog.text


def test_nack_paths() -> None:
    b = ListBroker()
    b.publish(body(1), Signature("add"))
    b.publish(body(2), Signature("add"))
    stop, it = run(b, prefetch=1)
    d1 = next(it)
    b.nack(d1, requeue=False)
    assert b.dead == [d1.body]
    d2 = next(it)
    b.nack(d2)  # requeue at once
    assert b.ready == [d2.body]
    d3 = next(it)
    t0 = time.monotonic()
    b.nack(d3, delay=0.3)  # no _defer: the core keeps it and releases it when due
    assert b.taken == [d3.body]
    d4 = next(it)
    assert d4.body == d3.body and time.monotonic() - t0 >= 0.29
    b.ack(d4)
    stop.set()
    list(it)


def test_eta_held_when_near_deferred_when_far() -> None:
    b = DeferringBroker()
    now = datetime.now(timezone.utc)
    near, far, plain = body(1, now + timedelta(seconds=0.4)), body(2, now + timedelta(seconds=1.5)), body(3)
    for x in (near, far, plain):
        b.publish(x, Signature("add"))
    stop, it = run(b)
    order = []
    for _ in range(3):
        d = next(it)
        order.append((d.body, time.time()))
        b.ack(d)
    stop.set()
    list(it)
    assert [o[0] for o in order] == [plain, near, far]
    assert order[1][1] >= (now + timedelta(seconds=0.4)).timestamp()
    assert order[2][1] >= (now + timedelta(seconds=1.5)).timestamp()
    assert len(b.deferred) == 1 and 1.0 < b.deferred[0] <= 1.5


def test_close_releases_core_held_deferrals() -> None:
    b = ListBroker()
    b.publish(body(1), Signature("add"))
    stop, it = run(b)
    d = next(it)
    b.nack(d, delay=30)
    stop.set()
    list(it)
    b.close()
    assert b.ready == [d.body] and b.taken == []


def test_heartbeat_extends_held() -> None:
    extended: list[int] = []

    class Beating(ListBroker):
        extend_interval = 0.05

        def _extend(self, deliveries: Sequence[Delivery]) -> None:
            extended.append(len(deliveries))

    b = Beating()
    b.publish(body(1), Signature("add"))
    stop, it = run(b)
    d = next(it)
    time.sleep(0.3)
    assert extended and set(extended) == {1}
    b.ack(d)
    stop.set()
    list(it)
    b.close()


def test_eta_of() -> None:
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert eta_of(body(1, eta)) == eta.timestamp()
    assert eta_of(body(1)) is None
    assert eta_of(b'{"ETA": oops') is None


def test_event_loop_thread() -> None:
    lt = EventLoopThread()

    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    assert lt.run(where()) == "machinery-loop"

    async def slow() -> None:
        await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        lt.run(slow(), timeout=0.05)
    lt.close()
    lt.close()


def test_async_adapter() -> None:
    class AsyncList(AsyncPollingBroker):
        fetch_wait: ClassVar[float] = 0.2
        connection_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)

        def __init__(self) -> None:
            super().__init__("alist://", Config())
            self.items: list[bytes] = [body(1)]
            self.acked: list[bytes] = []
            self.fail = False
            self.closed = False

        def publish(self, body: bytes, signature: Signature) -> None:
            self.items.append(body)

        async def _afetch(self, queue: str, max_n: int, wait: float) -> Sequence[Delivery]:
            if self.fail:
                raise OSError("gone")
            await asyncio.sleep(0 if self.items else wait)
            got, self.items = self.items[:max_n], self.items[max_n:]
            return [Delivery(body=b, queue=queue) for b in got]

        async def _aack(self, delivery: Delivery) -> None:
            self.acked.append(delivery.body)

        async def _arelease(self, deliveries: Sequence[Delivery]) -> None:
            self.items.extend(d.body for d in deliveries)

        async def _adead_letter(self, delivery: Delivery) -> None:
            pass

        async def _aclose(self) -> None:
            self.closed = True

    b = AsyncList()
    assert not b._implements("_defer") and not b._implements("_extend")
    stop, it = run(b)
    d = next(it)
    b.ack(d)
    assert b.acked == [body(1)]
    b.fail = True
    with pytest.raises(BrokerConnectionError):
        b._fetch("q", 1, 0.1)
    stop.set()
    assert list(it) == []
    b.close()
    assert b.closed




def test_heartbeat_covers_fetched_messages_not_yet_handed_out() -> None:
    """A batch waiting in the consumer is extended too (a slow pool must not lose its leases)."""
    extended: list[int] = []

    class Beating(ListBroker):
        extend_interval = 0.05

        def _extend(self, deliveries: Sequence[Delivery]) -> None:
            extended.append(len(deliveries))

    b = Beating()
    for i in range(3):
        b.publish(body(i), Signature("add"))
    stop, it = run(b, prefetch=3)
    d = next(it)  # one handed out, two waiting
    time.sleep(0.3)
    assert extended and max(extended) == 3
    b.ack(d)
    stop.set()
    list(it)
    b.close()
    assert sorted(b.ready) == sorted([body(1), body(2)])


def test_settle_waits_for_an_extend_covering_it() -> None:
    """An ack or nack never runs while an ``_extend`` that includes its message is running (the
    extension would overwrite a nack's shorter visibility)."""
    events: list[str] = []
    in_extend = threading.Event()

    class Slow(ListBroker):
        extend_interval = 0.05

        def _extend(self, deliveries: Sequence[Delivery]) -> None:
            events.append("extend-start")
            in_extend.set()
            time.sleep(0.3)
            events.append("extend-end")

        def _release(self, deliveries: Sequence[Delivery]) -> None:
            events.append("release")
            super()._release(deliveries)

    b = Slow()
    b.publish(body(1), Signature("add"))
    stop, it = run(b)
    d = next(it)
    assert in_extend.wait(2)
    b.nack(d)
    stop.set()
    list(it)
    b.close()
    i = events.index("release")
    assert events[i - 1] == "extend-end", events


def test_eta_in_consumer_on_a_broker_with_native_delay() -> None:
    """``eta_in_consumer`` makes a broker that declares native delay (SQS) hold early messages
    back like one without; without it they are handed out as fetched."""
    far = datetime.now(timezone.utc) + timedelta(seconds=30)

    class Native(DeferringBroker):
        supports_native_delay = True

    class Held(Native):
        eta_in_consumer = True

    plain = Native()
    plain.publish(body(1, far), Signature("add"))
    stop, it = run(plain)
    assert next(it).body == body(1, far)
    stop.set()
    list(it)

    held = Held()
    held.publish(body(1, far), Signature("add"))
    held.publish(body(2), Signature("add"))
    stop, it = run(held)
    assert next(it).body == body(2)
    assert len(held.deferred) == 1 and 29 < held.deferred[0] <= 30
    stop.set()
    list(it)


def test_ordering_key_one_message_of_a_key_at_a_time() -> None:
    """With ``_ordering_key``, a second message of a key waits until the first is settled; a
    message of another key (or none) is handed out meanwhile; waiting ones count as held."""

    class Keyed(ListBroker):
        def _ordering_key(self, delivery: Delivery) -> str:
            return delivery.body.split(b"|")[0].decode()

    b = Keyed()
    for x in (b"a|1", b"a|2", b"b|1", b"|free", b"a|3"):
        b.publish(x, Signature("add"))
    stop, it = run(b, prefetch=5)
    got = [next(it).body for _ in range(3)]
    assert got == [b"a|1", b"b|1", b"|free"]
    blocked: list[Delivery] = []
    t = threading.Thread(target=lambda: blocked.append(next(it)))
    t.start()
    t.join(0.5)
    assert not blocked, "a second message of key 'a' was handed out while the first ran"
    assert b.asked == [5]  # all five held (2 waiting): nothing more fetched
    first = next(d for d in b._held_deliveries() if d.body == b"a|1")
    b.ack(first)
    t.join(2)
    assert [d.body for d in blocked] == [b"a|2"]
    stop.set()
    b.ack(blocked[0])
    list(it)
    assert b.ready == [b"a|3"]


# -- the push variant -----------------------------------------------------------------------------


class _Sub:
    def __init__(self, broker: PushList, queue: str, prefetch: int, inbox: Inbox) -> None:
        self.broker, self.queue, self.prefetch, self.inbox = broker, queue, prefetch, inbox
        self.cancelled = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        b = self.broker
        while not self.cancelled.is_set():
            with b.cond:
                if b.fail_with is not None:
                    err, b.fail_with = b.fail_with, None
                    self.inbox.fail(err)
                    return
                if b.ready and len(b.taken) < self.prefetch:  # the server's prefetch limit
                    body = b.ready.pop(0)
                    b.taken.append(body)
                    self.inbox.put(Delivery(body=body, queue=self.queue))
                    continue
                b.cond.wait(0.05)

    def cancel(self) -> None:
        self.cancelled.set()
        self.broker.cancels += 1


class PushList(PushBroker):
    """ListBroker's store, pushed from a thread per subscription (like pika's I/O thread)."""

    fetch_wait: ClassVar[float] = 0.2
    backoff_initial: ClassVar[float] = 0.05

    def __init__(self) -> None:
        super().__init__("push://", Config())
        self.cond = threading.Condition()
        self.ready: list[bytes] = []
        self.taken: list[bytes] = []
        self.acked: list[bytes] = []
        self.subs: list[_Sub] = []
        self.cancels = 0
        self.fail_with: BaseException | None = None

    def publish(self, body: bytes, signature: Signature) -> None:
        with self.cond:
            self.ready.append(body)
            self.cond.notify_all()

    def _subscribe(self, queue: str, prefetch: int, inbox: Inbox) -> _Sub:
        sub = _Sub(self, queue, prefetch, inbox)
        self.subs.append(sub)
        return sub

    def _ack(self, delivery: Delivery) -> None:
        with self.cond:
            self.taken.remove(delivery.body)
            self.acked.append(delivery.body)
            self.cond.notify_all()

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        with self.cond:
            for d in deliveries:
                self.taken.remove(d.body)
                self.ready.append(d.body)
            self.cond.notify_all()

    def _dead_letter(self, delivery: Delivery) -> None:
        self._ack(delivery)


def test_push_broker_consumes_and_gives_back_on_stop() -> None:
    b = PushList()
    for i in range(4):
        b.publish(body(i), Signature("add"))
    stop, it = run(b, prefetch=2)
    first = next(it)
    assert len(b.subs) == 1 and b.subs[0].prefetch == 2
    time.sleep(0.2)  # the subscription pushes up to its prefetch
    b.ack(first)
    second = next(it)
    stop.set()
    list(it)
    assert b.cancels == 1 and b.subs[0].cancelled.is_set()
    assert b.taken == [second.body]  # what was pushed and not handed out went back
    b.ack(second)
    assert sorted(b.ready + b.acked) == sorted(body(i) for i in range(4))


def test_push_broker_resubscribes_after_a_connection_error() -> None:
    b = PushList()
    b.fail_with = BrokerConnectionError("lost")
    b.publish(body(1), Signature("add"))
    stop, it = run(b)
    d = next(it)  # the first subscription failed; the core backed off and opened another
    assert len(b.subs) == 2 and d.body == body(1)
    b.ack(d)
    stop.set()
    list(it)


def test_push_broker_other_errors_end_consume() -> None:
    b = PushList()
    b.fail_with = BrokerError("refused")
    _, it = run(b)
    with pytest.raises(BrokerError, match="refused"):
        next(it)
    assert b.cancels == 1


def test_push_broker_one_subscription_per_queue() -> None:
    b = PushList()
    stop = threading.Event()
    one, two = b.consume("q", prefetch=2, stop=stop), b.consume("q", prefetch=2, stop=stop)
    b.publish(body(1), Signature("add"))
    got = [next(one)]
    b.publish(body(2), Signature("add"))
    got.append(next(two))
    assert len(b.subs) == 1
    for d in got:
        b.ack(d)
    stop.set()
    list(one)
    assert b.cancels == 0  # the other consume still runs
    list(two)
    assert b.cancels == 1
