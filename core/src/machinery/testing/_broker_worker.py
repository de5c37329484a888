"""Broker contract tests, part 2: stopping, concurrent consumers, and a real worker on the broker."""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from machinery.interfaces import Broker, Delivery
from machinery.signature import Signature, args_of, decode_signature, encode_signature, new_uuid
from machinery.testing._broker_base import BrokerSuite, require_capability
from machinery.testing._support import Consumer, WorkerHandle, wait_until

if TYPE_CHECKING:
    from machinery.server import Server
    from machinery.testing.oracle import BrokerOracle


__all__ = ["BrokerWorkerTests"]


class BrokerWorkerTests(BrokerSuite):
    """Part of :class:`~machinery.testing.BrokerConformance`: stopping, concurrency and a worker
    (malformed messages, unknown tasks, killed workers)."""

    _machinery_suite = True

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
