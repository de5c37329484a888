"""Broker contract tests, part 1: the plugin declares itself, messages move, ETAs, capabilities."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from machinery.interfaces import Broker, Delivery
from machinery.plugins import get_plugin_host, scheme_of
from machinery.signature import Signature, args_of, decode_signature, encode_signature, new_uuid
from machinery.testing._broker_base import _BOOL_CAPABILITIES, BrokerSuite, require_capability
from machinery.testing._support import Consumer, wait_until
from machinery.testing._values import every_arg

if TYPE_CHECKING:
    from machinery.testing.oracle import BrokerOracle


__all__ = ["BrokerMessageTests"]


class BrokerMessageTests(BrokerSuite):
    """Part of :class:`~machinery.testing.BrokerConformance`: registration, moving messages, ETA
    and the declared capabilities."""

    _machinery_suite = True

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
