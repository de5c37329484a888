"""Broker contract tests: :class:`BrokerConformance`."""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from machinery.interfaces import Broker, Delivery
from machinery.plugins import get_plugin_host, scheme_of
from machinery.signature import Signature, args_of, decode_signature, encode_signature, new_uuid
from machinery.testing._guard import SuiteBase
from machinery.testing._support import Consumer, WorkerHandle, wait_until
from machinery.testing._values import every_arg

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.server import Server
    from machinery.testing.oracle import BrokerOracle

__all__ = ["BrokerConformance", "require_capability"]

_BOOL_CAPABILITIES = (
    "supports_native_delay",
    "supports_priority",
    "supports_pending_listing",
    "supports_delayed_listing",
    "redelivers_unacked",
    "supports_purge",
    "supports_dead_letters",
)


def require_capability(cls: type, capability: str, why: str) -> None:
    """Skip the running test, with a stated reason, when ``cls`` does not declare ``capability``."""
    __tracebackhide__ = True  # report the skip at the test, not here
    if not getattr(cls, capability, False):
        pytest.skip(f"{cls.__name__}.{capability} is False: {why}")


class BrokerConformance(SuiteBase):
    """The broker contract. Subclass it in your plugin's tests (``class TestMyBroker(BrokerConformance): ...``).

    Needs the fixtures ``url`` (yours) and ``broker_oracle`` (yours, a
    :class:`~machinery.testing.BrokerOracle`); see :mod:`machinery.testing.plugin` for the rest.
    The broker class is resolved from the URL through the plugin host, as a user's
    ``Server(...)`` would, so the plugin must be installed and registered.
    """

    _machinery_suite = True

    #: Seconds after its ETA within which a task must be delivered (slack for polling brokers).
    eta_tolerance: ClassVar[float] = 1.5
    #: Seconds within which ``consume`` must return once ``stop`` is set.
    stop_timeout: ClassVar[float] = 2.5
    #: Seconds to wait for a message that should arrive now.
    delivery_timeout: ClassVar[float] = 10.0
    #: Seconds the oracle may take to show a count (stores with eventually consistent counts).
    oracle_timeout: ClassVar[float] = 3.0
    #: The redelivery timeout in effect with your ``transport_options`` (None: the broker
    #: class's ``redelivery_timeout``). Set it when your options shorten the visibility timeout.
    redelivery_timeout: ClassVar[float | None] = None

    # -- fixtures -------------------------------------------------------------------------------

    @pytest.fixture
    def broker_class(self, broker_url: str) -> type[Broker]:
        """The broker class the plugin host resolves for ``broker_url``."""
        return get_plugin_host().broker_class(broker_url)

    @pytest.fixture
    def broker(self, machinery_server: Server) -> Broker:
        """The producer server's broker."""
        return machinery_server.broker

    @pytest.fixture
    def new_broker(
        self, broker_class: type[Broker], broker_url: str, machinery_config: Config
    ) -> Iterator[Callable[[], Broker]]:
        """Make further broker instances (separate connections), closed at teardown."""
        made: list[Broker] = []

        def make() -> Broker:
            b = broker_class(broker_url, machinery_config)
            made.append(b)
            return b

        yield make
        for b in made:
            b.close()

    @pytest.fixture
    def consumers(self) -> Iterator[Callable[..., Consumer]]:
        """Start :class:`~machinery.testing._support.Consumer` threads, stopped at teardown."""
        running: list[Consumer] = []

        def start(broker: Broker, queue: str, **kwargs: Any) -> Consumer:
            c = Consumer(broker, queue, **kwargs)
            running.append(c)
            return c

        yield start
        for c in running:
            if not c.finished.is_set():
                c.stop()

    # -- helpers --------------------------------------------------------------------------------

    def effective_redelivery_timeout(self, broker_class: type[Broker]) -> float:
        """The redelivery timeout the tests wait for."""
        return float(self.redelivery_timeout or broker_class.redelivery_timeout)

    @staticmethod
    def publish(broker: Broker, sig: Signature) -> Signature:
        """Publish ``sig`` as the server does (UUID, routing key, Go encoding)."""
        if not sig.uuid:
            sig.uuid = new_uuid()
        broker.adjust_routing_key(sig)
        broker.publish(encode_signature(sig), sig)
        return sig

    def count(self, oracle: BrokerOracle, queue: str, expected: int) -> None:
        """Assert the oracle sees ``expected`` messages in ``queue`` within ``oracle_timeout``."""
        timeout = self.oracle_timeout
        last: list[int] = []

        def ok() -> bool:
            last.append(oracle.message_count(queue))
            return last[-1] == expected

        try:
            wait_until(ok, timeout, interval=0.05)
        except AssertionError:
            raise AssertionError(f"oracle: {last[-1]} message(s) in {queue!r}, expected {expected}") from None

    # -- the plugin is installed and declares itself ----------------------------------------------

    def test_resolved_through_entry_point(self, broker_url: str, broker_class: type[Broker], broker: Broker) -> None:
        """The URL's scheme is registered through the plugin host and serves a Broker subclass."""
        assert scheme_of(broker_url) in get_plugin_host().schemes("broker")
        assert issubclass(broker_class, Broker)
        assert type(broker) is broker_class

    def test_capabilities_declared(self, broker_class: type[Broker]) -> None:
        """Capability attributes have the right types and match what the class implements."""
        for name in _BOOL_CAPABILITIES:
            assert isinstance(getattr(broker_class, name), bool), f"{name} must be a bool"
        assert isinstance(broker_class.redelivery_timeout, (int, float)) and broker_class.redelivery_timeout > 0
        assert broker_class.config_section is None or isinstance(broker_class.config_section, str)
        env_options = getattr(broker_class, "env_options", {})
        assert isinstance(env_options, dict) and all(isinstance(k, str) for k in env_options)
        for capability, method in (
            ("supports_pending_listing", "pending_tasks"),
            ("supports_delayed_listing", "delayed_tasks"),
            ("supports_purge", "purge"),
            ("supports_dead_letters", "list_dead_letters"),
            ("supports_dead_letters", "remove_dead_letter"),
        ):
            if getattr(broker_class, capability):
                assert getattr(broker_class, method) is not getattr(Broker, method), (
                    f"{capability} is True but {method}() is not implemented"
                )

    # -- moving messages ------------------------------------------------------------------------

    def test_round_trip_every_argument_type(
        self, broker: Broker, consumers: Callable[..., Consumer], machinery_queue: str
    ) -> None:
        """A signature with an argument of every Go type and every field set arrives unchanged."""
        sig = Signature(
            "echo",
            args=every_arg(),
            headers={"trace": "abc", "nested": {"n": [1, 2.5, "x"]}},
            retry_count=3,
            retry_timeout=2,
            immutable=True,
            on_success=[Signature("add", args=args_of([1]), uuid=new_uuid())],
            on_error=[Signature("record_error", uuid=new_uuid())],
            broker_message_group_id="g1",
            stop_task_deletion_on_error=True,
        )
        self.publish(broker, sig)
        body = encode_signature(sig)
        d = consumers(broker, machinery_queue).take(self.delivery_timeout)
        assert d is not None, "published message was not delivered"
        assert d.queue == machinery_queue
        assert d.body == body, "the message body must reach the consumer byte for byte"
        assert decode_signature(d.body) == sig
        broker.ack(d)

    def test_publish_many(self, broker: Broker, consumers: Callable[..., Consumer], machinery_queue: str) -> None:
        """``publish_many`` delivers every message exactly once."""
        sigs = [Signature("add", args=args_of([i, i]), uuid=new_uuid()) for i in range(25)]
        for s in sigs:
            broker.adjust_routing_key(s)
        broker.publish_many([(encode_signature(s), s) for s in sigs])
        seen: list[str] = []

        def on_delivery(d: Delivery) -> None:
            seen.append(decode_signature(d.body).uuid)
            broker.ack(d)

        c = consumers(broker, machinery_queue, prefetch=5, on_delivery=on_delivery)
        wait_until(lambda: len(seen) >= len(sigs), self.delivery_timeout, what="25 deliveries")
        time.sleep(0.3)
        c.stop()
        assert sorted(seen) == sorted(s.uuid for s in sigs)

    def test_custom_queue_routing(
        self,
        broker: Broker,
        new_broker: Callable[[], Broker],
        consumers: Callable[..., Consumer],
        machinery_queue: str,
        broker_oracle: BrokerOracle,
    ) -> None:
        """A signature with a routing key reaches that queue, not the default one."""
        custom = f"{machinery_queue}_custom"
        sig = self.publish(broker, Signature("add", args=args_of([1]), routing_key=custom))
        assert consumers(broker, machinery_queue).take(1.0) is None, "message leaked into the default queue"
        self.count(broker_oracle, custom, 1)
        self.count(broker_oracle, machinery_queue, 0)
        other = new_broker()
        d = consumers(other, custom).take(self.delivery_timeout)
        assert d is not None, f"message routed to {custom!r} was not delivered there"
        assert decode_signature(d.body).uuid == sig.uuid
        other.ack(d)
        self.count(broker_oracle, custom, 0)

    def test_message_kept_until_ack(
        self, broker: Broker, consumers: Callable[..., Consumer], machinery_queue: str, broker_oracle: BrokerOracle
    ) -> None:
        """A delivered message stays in the queue (unacknowledged) until ``ack`` removes it."""
        self.publish(broker, Signature("add", args=args_of([1])))
        self.count(broker_oracle, machinery_queue, 1)
        d = consumers(broker, machinery_queue).take(self.delivery_timeout)
        assert d is not None
        self.count(broker_oracle, machinery_queue, 1)  # delivered, not acknowledged: still there
        broker.ack(d)
        self.count(broker_oracle, machinery_queue, 0)

    def test_nack_requeue_redelivers(
        self, broker: Broker, consumers: Callable[..., Consumer], machinery_queue: str, broker_oracle: BrokerOracle
    ) -> None:
        """``nack(requeue=True)`` gives the message back; it is delivered again."""
        sig = self.publish(broker, Signature("add", args=args_of([2])))
        c = consumers(broker, machinery_queue)
        d1 = c.take(self.delivery_timeout)
        assert d1 is not None
        broker.nack(d1, requeue=True)
        d2 = c.take(self.delivery_timeout)
        assert d2 is not None, "a nacked message was lost"
        assert decode_signature(d2.body).uuid == sig.uuid
        self.count(broker_oracle, machinery_queue, 1)
        broker.ack(d2)
        self.count(broker_oracle, machinery_queue, 0)

    def test_nack_with_delay(
        self, broker: Broker, broker_class: type[Broker], consumers: Callable[..., Consumer], machinery_queue: str
    ) -> None:
        """``nack(delay=1)`` redelivers the message after about a second (never before, unless the
        broker has native delay and may return an ETA-less message at once)."""
        delay = 1.0
        sig = self.publish(broker, Signature("add", args=args_of([3])))
        c = consumers(broker, machinery_queue)
        d1 = c.take(self.delivery_timeout)
        assert d1 is not None
        t0 = time.monotonic()
        broker.nack(d1, requeue=True, delay=delay)
        d2 = c.take(delay + self.eta_tolerance + self.delivery_timeout)
        elapsed = time.monotonic() - t0
        assert d2 is not None, "a message nacked with a delay was lost"
        assert decode_signature(d2.body).uuid == sig.uuid
        if not broker_class.supports_native_delay:
            assert elapsed >= delay - 0.05, f"redelivered after {elapsed:.2f}s, before the {delay}s delay"
        assert elapsed <= delay + self.eta_tolerance, f"redelivered after {elapsed:.2f}s (bound {self.eta_tolerance}s)"
        broker.ack(d2)

    def test_nack_without_requeue_removes(
        self, broker: Broker, consumers: Callable[..., Consumer], machinery_queue: str, broker_oracle: BrokerOracle
    ) -> None:
        """``nack(requeue=False)`` takes the message out of the queue (dead-letters or drops it)."""
        self.publish(broker, Signature("add", args=args_of([4])))
        c = consumers(broker, machinery_queue)
        d = c.take(self.delivery_timeout)
        assert d is not None
        broker.nack(d, requeue=False)
        self.count(broker_oracle, machinery_queue, 0)
        assert c.take(1.0) is None, "a message nacked without requeue came back"

    def test_dead_letters_are_listed_and_removed(
        self, broker: Broker, broker_class: type[Broker], consumers: Callable[..., Consumer], machinery_queue: str
    ) -> None:
        """Where ``supports_dead_letters``: a message nacked without requeue is listed by
        ``list_dead_letters`` (its queue, its body byte for byte), found by ``get_dead_letter``,
        and gone after ``remove_dead_letter`` (which then says False)."""
        require_capability(broker_class, "supports_dead_letters", "the broker keeps no dead letters it can list")
        sig = self.publish(broker, Signature("add", args=args_of([7])))
        c = consumers(broker, machinery_queue)
        d = c.take(self.delivery_timeout)
        assert d is not None
        broker.nack(d, requeue=False)
        letters = wait_until(
            lambda: [x for x in broker.list_dead_letters(machinery_queue) if x.body == d.body],
            self.delivery_timeout,
            what="the dead letter to be listed",
        )
        assert len(letters) == 1 and letters[0].queue == machinery_queue
        assert decode_signature(letters[0].body).uuid == sig.uuid
        assert broker.get_dead_letter(letters[0].id, machinery_queue) == letters[0]
        assert broker.remove_dead_letter(letters[0]) is True
        assert all(x.body != d.body for x in broker.list_dead_letters(machinery_queue))
        assert broker.get_dead_letter(letters[0].id, machinery_queue) is None
        assert broker.remove_dead_letter(letters[0]) is False

    # -- ETA --------------------------------------------------------------------------------------

    def test_eta_not_early_and_within_bound(
        self, broker: Broker, broker_class: type[Broker], consumers: Callable[..., Consumer], machinery_queue: str
    ) -> None:
        """A task is not delivered before its ETA, is delivered within ``eta_tolerance`` after it,
        and does not hold up tasks without an ETA behind it."""
        eta = datetime.now(timezone.utc) + timedelta(seconds=1.2)
        later = self.publish(broker, Signature("add", args=args_of([5]), eta=eta))
        now_sig = self.publish(broker, Signature("add", args=args_of([6])))
        c = consumers(broker, machinery_queue)
        early: list[tuple[Signature, float]] = []
        first = c.take_due(self.delivery_timeout, early=early)
        assert first is not None and first[1].uuid == now_sig.uuid, "a task without ETA waited behind a delayed one"
        broker.ack(first[0])
        second = c.take_due(1.2 + self.eta_tolerance + self.delivery_timeout, early=early)
        assert second is not None, "the delayed task was never delivered"
        d, sig, at = second
        assert sig.uuid == later.uuid
        lateness = at - eta.timestamp()
        assert lateness >= -0.01, f"delivered {-lateness:.3f}s before its ETA"
        assert lateness <= self.eta_tolerance, f"delivered {lateness:.2f}s after its ETA (bound {self.eta_tolerance}s)"
        if broker_class.supports_native_delay:
            assert not early, f"supports_native_delay is True but {len(early)} delivery(ies) came before the ETA"
        broker.ack(d)

    @pytest.mark.slow
    def test_eta_beyond_redelivery_timeout_delivered_once(
        self,
        broker: Broker,
        broker_class: type[Broker],
        new_broker: Callable[[], Broker],
        consumers: Callable[..., Consumer],
        machinery_queue: str,
    ) -> None:
        """A task whose ETA lies beyond the redelivery (visibility/ack) timeout is run once, by
        one of two competing consumers, on time."""
        require_capability(broker_class, "redelivers_unacked", "no visibility/ack timeout to outlast")
        timeout = self.effective_redelivery_timeout(broker_class)
        eta = datetime.now(timezone.utc) + timedelta(seconds=timeout + 1.0)
        sig = self.publish(broker, Signature("add", args=args_of([7]), eta=eta))
        due: list[tuple[str, float]] = []
        early: list[float] = []
        lock = threading.Lock()

        def worker_like(b: Broker) -> Callable[[Delivery], None]:
            def on_delivery(d: Delivery) -> None:
                s = decode_signature(d.body)
                ahead = s.eta.timestamp() - time.time() if s.eta else 0.0
                if ahead > 0.002:
                    early.append(ahead)
                    b.nack(d, requeue=True, delay=ahead)
                    return
                with lock:
                    due.append((s.uuid, time.time()))
                b.ack(d)

            return on_delivery

        other = new_broker()
        consumers(broker, machinery_queue, on_delivery=worker_like(broker))
        consumers(other, machinery_queue, on_delivery=worker_like(other))
        wait_until(lambda: due, timeout + 1.0 + self.eta_tolerance + self.delivery_timeout, what="the delayed task")
        time.sleep(1.5)
        assert [u for u, _ in due] == [sig.uuid], f"delivered {len(due)} times: {due}"
        lateness = due[0][1] - eta.timestamp()
        assert -0.01 <= lateness <= self.eta_tolerance, f"delivered {lateness:+.2f}s from its ETA"
        if broker_class.supports_native_delay:
            assert not early, "supports_native_delay is True but the task came before its ETA"

    # -- declared capabilities --------------------------------------------------------------------

    def test_priority(
        self, broker: Broker, broker_class: type[Broker], consumers: Callable[..., Consumer], machinery_queue: str
    ) -> None:
        """Higher-priority messages waiting in a queue are delivered before lower ones."""
        require_capability(broker_class, "supports_priority", "priority is not honoured")
        low = [self.publish(broker, Signature("add", args=args_of([i]), priority=1)).uuid for i in range(3)]
        high = [self.publish(broker, Signature("add", args=args_of([i]), priority=9)).uuid for i in range(3)]
        c = consumers(broker, machinery_queue, prefetch=1)
        order = []
        for _ in range(6):
            d = c.take(self.delivery_timeout)
            assert d is not None
            order.append(decode_signature(d.body).uuid)
            broker.ack(d)
        assert set(order[:3]) == set(high), f"high-priority messages not first: {order} (high: {high}, low: {low})"

    def test_pending_tasks(
        self, broker: Broker, broker_class: type[Broker], consumers: Callable[..., Consumer], machinery_queue: str
    ) -> None:
        """``pending_tasks`` lists the waiting signatures, oldest first."""
        require_capability(broker_class, "supports_pending_listing", "pending_tasks() is not available")
        uuids = [self.publish(broker, Signature("add", args=args_of([i]))).uuid for i in range(3)]
        listed = broker.pending_tasks(machinery_queue)
        assert [s.uuid for s in listed] == uuids
        assert all(isinstance(s, Signature) and s.name == "add" for s in listed)
        assert [s.uuid for s in broker.pending_tasks()] == uuids, "pending_tasks() must default to the default queue"
        c = consumers(broker, machinery_queue)
        for _ in uuids:
            d = c.take(self.delivery_timeout)
            assert d is not None
            broker.ack(d)
        assert broker.pending_tasks(machinery_queue) == []

    def test_delayed_tasks(
        self, broker: Broker, broker_class: type[Broker], consumers: Callable[..., Consumer], machinery_queue: str
    ) -> None:
        """``delayed_tasks`` lists signatures held for their ETA, soonest first."""
        require_capability(broker_class, "supports_delayed_listing", "delayed_tasks() is not available")
        now = datetime.now(timezone.utc)
        a = self.publish(broker, Signature("add", args=args_of([1]), eta=now + timedelta(seconds=2.0)))
        b = self.publish(broker, Signature("add", args=args_of([2]), eta=now + timedelta(seconds=1.5)))
        mine = {a.uuid, b.uuid}
        listed = [s for s in broker.delayed_tasks() if s.uuid in mine]
        assert [s.uuid for s in listed] == [b.uuid, a.uuid]
        assert all(s.eta is not None for s in listed)
        if broker_class.supports_pending_listing:
            assert not mine & {s.uuid for s in broker.pending_tasks(machinery_queue)}
        c = consumers(broker, machinery_queue)
        for _ in range(2):
            got = c.take_due(2.0 + self.eta_tolerance + self.delivery_timeout)
            assert got is not None
            broker.ack(got[0])
        assert not [s for s in broker.delayed_tasks() if s.uuid in mine]

    def test_purge(
        self,
        broker: Broker,
        broker_class: type[Broker],
        consumers: Callable[..., Consumer],
        machinery_queue: str,
        broker_oracle: BrokerOracle,
    ) -> None:
        """``purge`` removes every waiting message of the queue and only of that queue."""
        require_capability(broker_class, "supports_purge", "purge() is not available")
        other = f"{machinery_queue}_custom"
        for i in range(3):
            self.publish(broker, Signature("add", args=args_of([i])))
        self.publish(broker, Signature("add", args=args_of([9]), routing_key=other))
        self.count(broker_oracle, machinery_queue, 3)
        removed = broker.purge(machinery_queue)
        assert removed in (3, 0), f"purge() returned {removed}; expected 3 (or 0 when the broker cannot count)"
        self.count(broker_oracle, machinery_queue, 0)
        self.count(broker_oracle, other, 1)
        assert consumers(broker, machinery_queue).take(1.0) is None

    # -- stopping and concurrency -----------------------------------------------------------------

    def test_stop_returns_promptly_when_idle(
        self, broker: Broker, consumers: Callable[..., Consumer], machinery_queue: str
    ) -> None:
        """``consume`` on an empty queue returns within ``stop_timeout`` of ``stop`` being set."""
        c = consumers(broker, machinery_queue)
        assert c.take(0.5) is None
        elapsed = c.stop()
        assert elapsed <= self.stop_timeout, f"consume() took {elapsed:.2f}s to notice stop"

    def test_stop_leaves_unprocessed_messages(
        self,
        broker: Broker,
        new_broker: Callable[[], Broker],
        consumers: Callable[..., Consumer],
        machinery_queue: str,
        broker_oracle: BrokerOracle,
    ) -> None:
        """Stopping returns promptly and leaves every message not yet handed out in the queue,
        where another consumer gets them."""
        sigs = [Signature("add", args=args_of([i]), uuid=new_uuid()) for i in range(5)]
        for s in sigs:
            broker.adjust_routing_key(s)
        broker.publish_many([(encode_signature(s), s) for s in sigs])
        c = consumers(broker, machinery_queue, prefetch=1)
        d = c.take(self.delivery_timeout)
        assert d is not None
        first = decode_signature(d.body).uuid
        broker.ack(d)
        elapsed = c.stop()
        assert elapsed <= self.stop_timeout, f"consume() took {elapsed:.2f}s to notice stop"
        self.count(broker_oracle, machinery_queue, 4)
        other = new_broker()
        rest: list[str] = []

        def on_delivery(d: Delivery) -> None:
            rest.append(decode_signature(d.body).uuid)
            other.ack(d)

        consumers(other, machinery_queue, on_delivery=on_delivery)
        wait_until(lambda: len(rest) >= 4, self.delivery_timeout, what="the 4 messages left behind")
        assert sorted(rest) == sorted(s.uuid for s in sigs if s.uuid != first)

    def test_concurrent_consumers_each_message_once(
        self,
        broker: Broker,
        new_broker: Callable[[], Broker],
        consumers: Callable[..., Consumer],
        machinery_queue: str,
        broker_oracle: BrokerOracle,
    ) -> None:
        """Four consumers on one queue share 100 messages; each is delivered exactly once."""
        sigs = [Signature("add", args=args_of([i]), uuid=new_uuid()) for i in range(100)]
        for s in sigs:
            broker.adjust_routing_key(s)
        broker.publish_many([(encode_signature(s), s) for s in sigs])
        seen: list[str] = []
        lock = threading.Lock()

        def acking(b: Broker) -> Callable[[Delivery], None]:
            def on_delivery(d: Delivery) -> None:
                with lock:
                    seen.append(decode_signature(d.body).uuid)
                b.ack(d)

            return on_delivery

        for b in [broker, *(new_broker() for _ in range(3))]:
            consumers(b, machinery_queue, prefetch=4, on_delivery=acking(b))
        wait_until(lambda: len(seen) >= len(sigs), 2 * self.delivery_timeout, what="100 deliveries")
        time.sleep(0.5)
        dupes = {u: n for u, n in collections.Counter(seen).items() if n > 1}
        assert not dupes, f"delivered more than once: {dupes}"
        assert sorted(seen) == sorted(s.uuid for s in sigs)
        self.count(broker_oracle, machinery_queue, 0)

    # -- with a worker ----------------------------------------------------------------------------

    def test_malformed_message_logged_and_consumer_survives(
        self,
        broker: Broker,
        machinery_server: Server,
        machinery_worker: Callable[..., WorkerHandle],
        machinery_queue: str,
        broker_oracle: BrokerOracle,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A body that is not a task neither crashes the consumer nor vanishes silently: the worker
        logs it at ERROR (body included) and takes it out of the queue; the next task runs."""
        marker = f"mt-garbage-{uuid.uuid4().hex[:8]}"
        garbage = b'{"not": "a task", oops ' + marker.encode()
        route = Signature("add")
        broker.adjust_routing_key(route)
        broker.publish(garbage, route)
        caplog.set_level(logging.ERROR, logger="machinery")
        machinery_worker(in_process=True)
        result = machinery_server.send_task(Signature("add", args=args_of([1, 2])))
        assert result.get(timeout=self.delivery_timeout) == 3, "the consumer did not survive a malformed message"
        # (the two may run on two task threads at once: the task can finish before the log line)
        wait_until(
            lambda: [r for r in caplog.records if r.levelno >= logging.ERROR and marker in r.getMessage()],
            self.delivery_timeout,
            what="the malformed message's body logged at ERROR",
        )
        self.count(broker_oracle, machinery_queue, 0)

    def test_unknown_task_requeued(
        self,
        machinery_server: Server,
        machinery_worker: Callable[..., WorkerHandle],
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A task no worker knows is given back, and runs once a worker that knows it appears."""
        monkeypatch.setattr("machinery.worker.UNREGISTERED_REQUEUE_DELAY", 0.3)
        caplog.set_level(logging.WARNING, logger="machinery.worker")
        name = f"mt_unregistered_{uuid.uuid4().hex[:8]}"
        result = machinery_server.send_task(Signature(name, args=args_of([7])))
        first = machinery_worker(in_process=True)
        wait_until(
            lambda: any(
                result.task_uuid in r.getMessage() and "not registered" in r.getMessage() for r in caplog.records
            ),
            self.delivery_timeout,
            what="the first worker to refuse the unknown task",
        )
        first.stop()

        def times_six(x: int) -> int:
            return x * 6

        machinery_worker(in_process=True, tasks={name: times_six})
        assert result.get(timeout=self.delivery_timeout) == 42, "the unknown task was lost"

    def test_unknown_task_dropped_when_asked(
        self,
        machinery_server: Server,
        machinery_worker: Callable[..., WorkerHandle],
        machinery_queue: str,
        broker_oracle: BrokerOracle,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """With ``ignore_when_task_not_registered`` an unknown task is dropped, not requeued."""
        caplog.set_level(logging.WARNING, logger="machinery.worker")
        name = f"mt_unregistered_{uuid.uuid4().hex[:8]}"
        result = machinery_server.send_task(Signature(name, args=args_of([7]), ignore_when_task_not_registered=True))
        first = machinery_worker(in_process=True)
        wait_until(
            lambda: any(result.task_uuid in r.getMessage() and "dropping" in r.getMessage() for r in caplog.records),
            self.delivery_timeout,
            what="the worker to drop the unknown task",
        )
        first.stop()
        self.count(broker_oracle, machinery_queue, 0)

    def test_lone_surrogates_neither_stick_nor_loop(
        self,
        broker: Broker,
        machinery_server: Server,
        machinery_worker: Callable[..., WorkerHandle],
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A message whose JSON holds lone surrogate escapes (``"\\ud800"``, not Unicode) is read
        as Go reads it, with U+FFFD in their place: an unknown task of that name is requeued (it
        does not stay taken for ever), and a worker that knows the name runs it and stores the
        result under the UUID as read."""
        monkeypatch.setattr("machinery.worker.UNREGISTERED_REQUEUE_DELAY", 0.3)
        caplog.set_level(logging.WARNING, logger="machinery.worker")
        tag = uuid.uuid4().hex[:8]
        # no RoutingKey: brokers that route by it rewrite the message when they requeue it
        raw = (
            f'{{"UUID":"task_{tag}\\udc00","Name":"mt_lone_{tag}\\ud800",'
            '"Args":[{"Type":"string","Value":"a\\ud800"}]}'
        ).encode()
        route = Signature("add")
        broker.adjust_routing_key(route)
        broker.publish(raw, route)
        task_uuid = f"task_{tag}\ufffd"

        def refusals() -> int:
            return sum(1 for r in caplog.records if task_uuid in r.getMessage() and "not registered" in r.getMessage())

        first = machinery_worker(in_process=True)
        wait_until(lambda: refusals() >= 2, self.delivery_timeout + 5, what="the unknown task to be requeued twice")
        first.stop()

        def echo_one(s: str) -> str:
            return s + "!"

        machinery_worker(in_process=True, tasks={f"mt_lone_{tag}\ufffd": echo_one})
        result = machinery_server.async_result(task_uuid)
        assert result.get(timeout=self.delivery_timeout) == "a\ufffd!"

    def test_empty_uuid_is_dead_lettered_with_a_reason(
        self,
        broker: Broker,
        machinery_server: Server,
        machinery_worker: Callable[..., WorkerHandle],
        machinery_queue: str,
        broker_oracle: BrokerOracle,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A message with an empty ``UUID`` is not run (its result would be stored under the empty
        key, overwritten by every such message): it is dropped to the dead letters, the reason
        logged at ERROR; the next task runs."""
        runs = tmp_path / "runs.txt"
        raw = encode_signature(Signature("record_run", args=args_of([str(runs)]), uuid=""))
        assert b'"UUID":""' in raw
        route = Signature("record_run")
        broker.adjust_routing_key(route)
        broker.publish(raw, route)
        caplog.set_level(logging.ERROR, logger="machinery")
        machinery_worker(in_process=True)
        result = machinery_server.send_task(Signature("add", args=args_of([1, 2])))
        assert result.get(timeout=self.delivery_timeout) == 3, "the consumer did not survive"
        wait_until(
            lambda: any("UUID" in r.getMessage() and "dead letters" in r.getMessage() for r in caplog.records),
            self.delivery_timeout,
            what="the worker to dead-letter the message without a UUID",
        )
        # (not run: no state is stored for it either; the empty key itself cannot be read back on
        # every backend: DynamoDB refuses it, an AMQP queue named "" is the last one declared)
        assert not runs.exists(), "a task without a UUID ran"
        self.count(broker_oracle, machinery_queue, 0)

    @pytest.mark.slow
    @pytest.mark.machinery_subprocess
    def test_redelivered_after_worker_killed(
        self,
        broker_class: type[Broker],
        machinery_server: Server,
        machinery_worker: Callable[..., WorkerHandle],
        machinery_queue: str,
        broker_oracle: BrokerOracle,
        tmp_path: Path,
    ) -> None:
        """At-least-once: a worker process killed with SIGKILL mid-task loses nothing; the task is
        delivered again (within the redelivery timeout) and completes."""
        require_capability(broker_class, "redelivers_unacked", "unacknowledged messages do not survive their consumer")
        if self.process_local:
            pytest.skip(f"{type(self).__name__}.process_local: no worker process can share this broker")
        runs = tmp_path / "runs.txt"

        def run_count() -> int:
            return len(runs.read_text().splitlines()) if runs.exists() else 0

        first = machinery_worker(concurrency=1)
        result = machinery_server.send_task(Signature("block_first_run", args=args_of([str(runs), 120.0])))
        wait_until(lambda: run_count() >= 1, 30, what="the task to start in the first worker")
        self.count(broker_oracle, machinery_queue, 1)
        first.kill()
        self.count(broker_oracle, machinery_queue, 1)
        machinery_worker(concurrency=1)
        timeout = self.effective_redelivery_timeout(broker_class) + 20
        assert result.get(timeout=timeout) == 2, "the task was not run again after its worker died"
        assert run_count() == 2
        self.count(broker_oracle, machinery_queue, 0)
