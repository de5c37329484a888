"""Server and worker behaviour on the in-process memory transport, with real threads."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from machinery import (
    Arg,
    Chain,
    Chord,
    Config,
    Group,
    ResultTimeoutError,
    RetryTaskLater,
    Server,
    Signature,
    TaskContext,
    TaskFailedError,
    Worker,
)
from machinery.builtin.memory import MemoryBackend, MemoryBroker
from machinery.errors import BackendConnectionError, BackendError
from machinery.interfaces import Completion, Delivery
from machinery.signature import encode_signature, encode_task_state
from machinery.state import TaskResult, TaskState
from machinery.workflow import chord_callback_to_send


@pytest.fixture
def server() -> Server:
    name = uuid.uuid4().hex
    srv = Server(Config(broker=f"memory://{name}", result_backend=f"memory://{name}", lock=f"memory://{name}"))

    @srv.task("add")
    def add(*args: int) -> int:
        return sum(args)

    @srv.task("multiply")
    def multiply(*args: int) -> int:
        out = 1
        for a in args:
            out *= a
        return out

    return srv


@pytest.fixture
def worker(server: Server) -> Iterator[Worker]:
    w = server.new_worker("test", 4)
    w.unregistered_requeue_delay = 0.2
    w.launch_in_background()
    yield w
    w.quit(timeout=10)


def test_the_issue_example(server: Server, worker: Worker) -> None:
    r = server.send_task(Signature("add", args=[Arg("int64", 1), Arg("int64", 1)]))
    assert r.get(timeout=5) == 2
    assert r.status == "SUCCESS"
    assert [(x.type, x.value) for x in r.results()] == [("int64", 2)]


def test_seed_chain_gives_48(server: Server, worker: Worker) -> None:
    chain = Chain(
        Signature("add", args=[Arg("int64", 1), Arg("int64", 1)]),
        Signature("add", args=[Arg("int64", 5), Arg("int64", 5)]),
        Signature("multiply", args=[Arg("int64", 4)]),
    )
    assert server.send_chain(chain).get(timeout=5) == 48
    # each step received the previous results appended
    last = server.backend.get_state(chain.tasks[-1].uuid)
    assert last is not None and last.values == [48]


def test_seed_chord_gives_20(server: Server, worker: Worker) -> None:
    chord = Chord(Group(Signature("add", args=[1, 1]), Signature("add", args=[5, 5])), Signature("multiply"))
    res = server.send_chord(chord)
    assert res.get(timeout=5) == 20
    assert [r.get() for r in res.group_results] == [2, 10]


def test_group_results_in_order(server: Server, worker: Worker) -> None:
    g = Group(*[Signature("add", args=[i, i]) for i in range(20)])
    results = server.send_group(g, send_concurrency=3)
    assert results.get(timeout=10) == [2 * i for i in range(20)]
    assert results.group_uuid == g.group_uuid


def test_an_immutable_task_does_not_pass_its_results_on(server: Server, worker: Worker) -> None:
    """The *finished* task's ``Immutable`` decides whether its results are appended to its
    ``OnSuccess`` signatures; the callback's own flag plays no part (Go's ``v2/worker.go``,
    ``taskSucceeded``: ``if signature.Immutable == false { ... successTask.Args = append(...) }``)."""
    cb = Signature("add", args=[100], uuid="task_" + uuid.uuid4().hex)
    server.send_task(Signature("add", args=[1, 2], immutable=True, on_success=[cb]))
    assert server.async_result(cb.uuid).get(timeout=5) == 100
    # an immutable callback of a mutable task still receives the results
    cb2 = Signature("add", args=[100], immutable=True, uuid="task_" + uuid.uuid4().hex)
    server.send_task(Signature("add", args=[1, 2], on_success=[cb2]))
    assert server.async_result(cb2.uuid).get(timeout=5) == 103


def test_chain_with_an_immutable_step_gives_40(server: Server, worker: Worker) -> None:
    """Chain(add(1,1) immutable, add(5,5), multiply(4)) = 40 on a Go worker (``v2/worker.go``);
    the plain chain stays 48 (``test_seed_chain_gives_48``)."""
    chain = Chain(
        Signature("add", args=[1, 1]).set_immutable(),
        Signature("add", args=[5, 5]),
        Signature("multiply", args=[4]),
    )
    assert chain.tasks[0].immutable and not chain.tasks[1].immutable
    assert server.send_chain(chain).get(timeout=5) == 40
    assert server.backend.get_state(chain.tasks[1].uuid).values == [10]  # type: ignore[union-attr]
    # an immutable *last-but-one* step: multiply(4) runs alone
    chain = Chain(
        Signature("add", args=[1, 1]), Signature("add", args=[5, 5], immutable=True), Signature("multiply", args=[4])
    )
    assert server.send_chain(chain).get(timeout=5) == 4


def test_immutable_chord_callback_does_not_receive_results(server: Server, worker: Worker) -> None:
    """The chord checks the callback's own flag (``ChordCallback.Immutable``, ``v2/worker.go``)."""
    chord = Chord(Group(Signature("add", args=[1])), Signature("add", args=[7], immutable=True))
    assert server.send_chord(chord).get(timeout=5) == 7
    chord = Chord(Group(Signature("add", args=[1], immutable=True)), Signature("add", args=[7]))
    assert server.send_chord(chord).get(timeout=5) == 8


def test_on_success_callbacks_get_results_appended(server: Server, worker: Worker) -> None:
    cb = Signature("add", args=[100], uuid="task_" + uuid.uuid4().hex)
    server.send_task(Signature("add", args=[1, 2], on_success=[cb]))
    assert server.async_result(cb.uuid).get(timeout=5) == 103


def test_task_error_is_failure_and_on_error_gets_the_error_first(
    server: Server, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[list[object]] = []

    @server.task("boom")
    def boom(x: int) -> None:
        raise ValueError(f"bad {x}")

    @server.task("record")
    def record(*args: object) -> str:
        seen.append(list(args))
        return "ok"

    cb = Signature("record", args=["extra"], uuid="task_" + uuid.uuid4().hex)
    caplog.set_level(logging.ERROR, logger="machinery")
    r = server.send_task(Signature("boom", args=[7], on_error=[cb]))
    with pytest.raises(TaskFailedError, match="bad 7") as info:
        r.get(timeout=5)
    # Go stores err.Error() and prepends it, typed "string", to OnError (v2/worker.go taskFailed)
    assert info.value.error == "bad 7"
    assert server.async_result(cb.uuid).get(timeout=5) == "ok"
    assert seen == [["bad 7", "extra"]]
    assert any(
        "Traceback" in rec.getMessage() and "ValueError: bad 7" in rec.getMessage() for rec in caplog.records
    ), "the log line keeps the exception class and the traceback"
    # the worker is still alive
    assert server.send_task(Signature("add", args=[1])).get(timeout=5) == 1


def test_retry_count_uses_fibonacci_backoff(server: Server, worker: Worker) -> None:
    attempts: list[float] = []

    @server.task("flaky")
    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return "done"

    published: list[Signature] = []
    server.set_pre_publish_handler(lambda s: published.append(s.copy()))
    r = server.send_task(Signature("flaky", retry_count=3))
    states = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not r.ready():
        states.add(r.status)
        time.sleep(0.02)
    assert r.get(timeout=1) == "done"
    assert "RETRY" in states
    # Go: RetryTimeout 0 -> 1 -> 2 seconds, RetryCount decremented each time
    retries = published[1:]
    assert [s.retry_timeout for s in retries] == [1, 2]
    assert [s.retry_count for s in retries] == [2, 1]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert 0.9 <= gaps[0] < 1.8 and 1.9 <= gaps[1] < 2.8


def test_stored_error_is_the_message_as_go_stores_err_error(server: Server, worker: Worker) -> None:
    """Go stores ``err.Error()`` and prepends ``Arg{Type: "string", Value: err.Error()}`` to each
    ``OnError`` signature (``v2/worker.go``, ``taskFailed``): ``"boom"``, not ``"RuntimeError: boom"``.
    An exception without a message stores its class name (a Go error always has text)."""

    @server.task("boom")
    def boom() -> None:
        raise RuntimeError("boom")

    @server.task("silent")
    def silent() -> None:
        raise KeyError

    @server.task("record")
    def record(err: str) -> str:
        return err

    cb = Signature("record", uuid="task_" + uuid.uuid4().hex)
    r = server.send_task(Signature("boom", on_error=[cb]))
    with pytest.raises(TaskFailedError):
        r.get(timeout=5)
    st = server.backend.get_state(r.task_uuid)
    assert st is not None and st.error == "boom"
    assert server.async_result(cb.uuid).get(timeout=5) == "boom"
    sent = server.backend.get_state(cb.uuid)
    assert sent is not None and sent.results is not None and sent.results[0].type == "string"
    r = server.send_task(Signature("silent"))
    with pytest.raises(TaskFailedError):
        r.get(timeout=5)
    st = server.backend.get_state(r.task_uuid)
    assert st is not None and st.error == "KeyError"


def test_retry_count_exhausted_is_failure(server: Server, worker: Worker) -> None:
    @server.task("always")
    def always() -> None:
        raise RuntimeError("nope")

    r = server.send_task(Signature("always", retry_count=1))
    with pytest.raises(TaskFailedError, match="nope"):
        r.get(timeout=5)


def test_retry_task_later(server: Server, worker: Worker) -> None:
    calls: list[float] = []

    @server.task("later")
    def later() -> int:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RetryTaskLater("busy", timedelta(milliseconds=300))
        return 5

    published: list[Signature] = []
    server.set_pre_publish_handler(lambda s: published.append(s.copy()))
    r = server.send_task(Signature("later"))
    assert r.get(timeout=5) == 5
    assert 0.25 <= calls[1] - calls[0] < 1.5
    assert published[1].retry_count == 0  # RetryTaskLater does not touch RetryCount


def test_eta_is_honoured(server: Server, worker: Worker) -> None:
    started: list[float] = []

    @server.task("when")
    def when() -> None:
        started.append(time.time())

    eta = datetime.now(timezone.utc) + timedelta(milliseconds=400)
    r = server.send_task(Signature("when", eta=eta))
    assert server.get_delayed_tasks()[0].uuid == r.task_uuid
    r.get(timeout=5)
    assert eta.timestamp() <= started[0] < eta.timestamp() + 0.1


def test_priority_orders_delivery(server: Server) -> None:
    order: list[int] = []

    @server.task("p")
    def p(n: int) -> None:
        order.append(n)

    for n in (1, 5, 3):
        server.send_task(Signature("p", args=[n], priority=n))
    w = server.new_worker("prio", 1).launch_in_background()
    try:
        deadline = time.monotonic() + 5
        while len(order) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        w.quit()
    assert order == [5, 3, 1]


def test_context_tasks_and_async_tasks(server: Server, worker: Worker) -> None:
    @server.task("ctx")
    def ctx(context: TaskContext, x: int) -> str:
        return f"{context.task_uuid}:{context.retry_count}:{context.headers.get('h')}:{x}"

    @server.task("aio")
    async def aio(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * 2

    r = server.send_task_with_context({"h": "v"}, Signature("ctx", args=[3], retry_count=2))
    assert r.get(timeout=5) == f"{r.task_uuid}:2:v:3"
    assert server.send_task(Signature("aio", args=[21])).get(timeout=5) == 42


def test_type_hints_validate_and_convert_arguments(server: Server, worker: Worker) -> None:
    @server.task("typed")
    def typed(a: int, b: float, c: str = "d") -> tuple[int, float, str]:
        return a, b, c

    r = server.send_task(Signature("typed", args=[Arg("int64", 1), Arg("int64", 2)]))
    assert r.get(timeout=5) == (1, 2.0, "d")
    assert [x.type for x in r.results()] == ["int64", "float64", "string"]
    bad = server.send_task(Signature("typed", args=["x", 1.0]))
    with pytest.raises(TaskFailedError, match="argument 1 of task 'typed'"):
        bad.get(timeout=5)
    arity = server.send_task(Signature("typed", args=[1, 2.0, "x", "y"]))
    with pytest.raises(TaskFailedError, match=r"takes 2\.\.3 arguments, got 4"):
        arity.get(timeout=5)


def test_handlers(server: Server, worker: Worker) -> None:
    events: list[str] = []
    errors: list[BaseException] = []
    worker.set_pre_task_handler(lambda s: events.append(f"pre:{s.name}"))
    worker.set_post_task_handler(lambda s: events.append(f"post:{s.name}"))
    worker.set_error_handler(errors.append)

    @server.task("fails")
    def fails() -> None:
        raise KeyError("k")

    server.send_task(Signature("add", args=[1])).get(timeout=5)
    with pytest.raises(TaskFailedError):
        server.send_task(Signature("fails")).get(timeout=5)
    assert events[:2] == ["pre:add", "post:add"]
    deadline = time.monotonic() + 5  # the post-task handler runs just after the state is stored
    while "post:fails" not in events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "pre:fails" in events and "post:fails" in events
    assert len(errors) == 1 and isinstance(errors[0], KeyError)


def test_pre_consume_handler_pauses_consumption(server: Server) -> None:
    allow = threading.Event()
    w = server.new_worker("paused", 2)
    w.set_pre_consume_handler(lambda _w: allow.is_set())
    w.launch_in_background()
    try:
        r = server.send_task(Signature("add", args=[4]))
        with pytest.raises(ResultTimeoutError):
            r.get(timeout=0.4)
        assert r.status == "PENDING"
        allow.set()
        assert r.get(timeout=5) == 4
    finally:
        w.quit()


def test_unregistered_task_is_requeued_until_a_worker_knows_it(server: Server, worker: Worker) -> None:
    r = server.send_task(Signature("unknown_yet", args=[1]))
    time.sleep(0.5)
    assert r.status == "PENDING"
    server.register_task("unknown_yet", lambda x: x + 1)
    assert r.get(timeout=5) == 2


def test_unregistered_task_with_ignore_flag_is_dropped(server: Server, worker: Worker) -> None:
    server.send_task(Signature("nobody", ignore_when_task_not_registered=True))
    time.sleep(0.3)
    broker = server.broker
    assert isinstance(broker, MemoryBroker)
    assert broker.pending_tasks() == [] and broker.delayed_tasks() == []


def test_malformed_message_is_dead_lettered_and_worker_survives(
    server: Server, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="machinery")
    broker = server.broker
    assert isinstance(broker, MemoryBroker)
    good = Signature("add", args=[1], routing_key=server.config.default_queue)
    # publish raw garbage and a bad argument straight to the queue
    broker.publish(b"{not json", good)
    broker.publish(b'{"Name":"add","Args":[{"Type":"int8","Value":999}]}', good)
    time.sleep(0.3)
    expected = sorted([b"{not json", b'{"Name":"add","Args":[{"Type":"int8","Value":999}]}'])
    deadline = time.monotonic() + 5
    while len(broker.dead_letters()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(broker.dead_letters()) == expected  # 4 threads: either order
    assert any("malformed" in r.getMessage() for r in caplog.records)
    assert server.send_task(Signature("add", args=[2])).get(timeout=5) == 2


def test_backend_failure_gives_the_message_back(server: Server, worker: Worker) -> None:
    backend = server.backend
    real = backend._store_state
    failures = {"n": 0}

    def flaky_store(state: TaskState) -> None:
        if state.state == "SUCCESS" and failures["n"] < 1:
            failures["n"] += 1
            raise ConnectionError("backend down")
        real(state)

    worker.backend_error_requeue_delay = 0.1
    backend._store_state = flaky_store  # type: ignore[method-assign]
    try:
        assert server.send_task(Signature("add", args=[9])).get(timeout=5) == 9
    finally:
        backend._store_state = real  # type: ignore[method-assign]
    assert failures["n"] == 1


def test_states_progress_received_started_success(server: Server) -> None:
    seen: list[str] = []
    gate = threading.Event()

    @server.task("gated")
    def gated() -> int:
        gate.wait(5)
        return 1

    r = server.send_task(Signature("gated"))
    seen.append(r.status)
    w = server.new_worker("s", 1).launch_in_background()
    try:
        deadline = time.monotonic() + 5
        while r.status != "STARTED" and time.monotonic() < deadline:
            time.sleep(0.005)
        seen.append(r.status)
        gate.set()
        r.get(timeout=5)
        seen.append(r.status)
    finally:
        w.quit()
    assert seen == ["PENDING", "STARTED", "SUCCESS"]


def test_quit_finishes_in_flight_tasks_and_leaves_the_rest(server: Server) -> None:
    done: list[int] = []

    @server.task("slow")
    def slow(n: int) -> None:
        time.sleep(0.3)
        done.append(n)

    for n in range(6):
        server.send_task(Signature("slow", args=[n]))
    w = server.new_worker("q", 2).launch_in_background()
    time.sleep(0.1)
    t0 = time.monotonic()
    w.quit(timeout=5)
    assert time.monotonic() - t0 < 1.5
    assert len(done) == 2
    assert len(server.get_pending_tasks()) == 4


def test_chord_of_1000_on_8_threads_fires_exactly_once() -> None:
    name = uuid.uuid4().hex
    srv = Server(Config(broker=f"memory://{name}", result_backend=f"memory://{name}"))
    fired: list[int] = []
    lock = threading.Lock()

    @srv.task("one")
    def one(i: int) -> int:
        return i

    @srv.task("total")
    def total(*xs: int) -> int:
        with lock:
            fired.append(len(xs))
        return sum(xs)

    w = srv.new_worker("c", 8).launch_in_background()
    try:
        chord = Chord(Group(*[Signature("one", args=[i]) for i in range(1000)]), Signature("total"))
        assert srv.send_chord(chord).get(timeout=60) == sum(range(1000))
        time.sleep(0.3)
    finally:
        w.quit()
    assert fired == [1000]


def test_get_timeout_is_a_clear_error(server: Server) -> None:
    r = server.send_task(Signature("add", args=[1]))
    with pytest.raises(ResultTimeoutError) as info:
        r.get(timeout=0.2)
    assert info.value.state == "PENDING" and r.task_uuid in str(info.value)


def test_async_get(server: Server, worker: Worker) -> None:
    r = server.send_task(Signature("add", args=[2, 3]))
    assert asyncio.run(r.aget(timeout=5)) == 5


def test_memory_broker_requires_ack(server: Server) -> None:
    broker = server.broker
    assert isinstance(broker, MemoryBroker)
    sig = Signature("add", args=[1], routing_key="q1")
    broker.publish(encode_signature(sig), sig)
    stop = threading.Event()
    gen = broker.consume("q1", prefetch=1, stop=stop)
    d = next(gen)
    assert isinstance(d, Delivery)
    broker.nack(d, requeue=True)
    d2 = next(gen)
    assert d2.body == d.body
    broker.ack(d2)
    stop.set()
    assert list(gen) == []


def _missing_group_warnings(caplog: pytest.LogCaptureFixture, group_uuid: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and group_uuid in r.getMessage()]


def test_a_chord_whose_group_record_is_gone_logs_a_warning(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="machinery")
    ran: list[int] = []

    @server.task("total")
    def total(*xs: int) -> int:
        ran.append(len(xs))
        return sum(xs)

    chord = Chord(Group(Signature("add", args=[1]), Signature("add", args=[2])), Signature("total"))
    server.send_chord(chord)
    group_uuid, cb = chord.group.group_uuid, chord.callback
    server.backend.purge_group_meta(group_uuid)  # as if it had expired, or the store restarted
    w = server.new_worker("c", 2).launch_in_background()
    try:
        def states() -> list[str | None]:
            return [getattr(server.get_state(t.uuid), "state", None) for t in chord.group.tasks]

        # the first member to finish warns; the other may still be running then
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
            _missing_group_warnings(caplog, group_uuid) and states() == ["SUCCESS", "SUCCESS"]
        ):
            time.sleep(0.01)
        assert states() == ["SUCCESS", "SUCCESS"]
        time.sleep(0.2)
    finally:
        w.quit(timeout=10)
    (warning,) = _missing_group_warnings(caplog, group_uuid)  # once, not once per member
    text = warning.getMessage()
    assert f"chord callback total ({cb.uuid}) of group {group_uuid} will not be sent" in text
    assert "missing from the result backend" in text
    assert ran == [] and server.backend.get_state(cb.uuid) is None


def test_a_group_record_gone_after_the_trigger_still_sends_the_results_read_before_it(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    # The chord is completed in one pass (complete_chord_member): the states are read before the
    # trigger and not again, so a record that expires just after the trigger loses nothing.
    backend = server.backend
    chord = Chord(Group(Signature("add", args=[1])), Signature("total"))
    member = chord.group.tasks[0]
    backend.init_group(chord.group.group_uuid, chord.group.uuids())
    backend.set_state_success(member, [TaskResult("int64", 1)])
    real = backend._mark_chord_triggered

    def trigger_then_expire(group_uuid: str) -> bool:
        won = real(group_uuid)
        backend.purge_group_meta(group_uuid)
        return won

    backend._mark_chord_triggered = trigger_then_expire  # type: ignore[method-assign]
    callback = chord_callback_to_send(backend, member)
    assert callback is chord.callback and [a.value for a in callback.args] == [1]
    assert not _missing_group_warnings(caplog, chord.group.group_uuid)


# -- backend errors that no retry can fix ------------------------------------------------------


class LimitedBackend(MemoryBackend):
    """A memory backend that refuses, for good, states above ``limit`` bytes of Go JSON (as
    memcached refuses items above its size limit)."""

    limit = 2000
    #: States refused whatever their size (``"FAILURE"``...), permanently.
    refuse: frozenset[str] = frozenset()
    #: How many stores of these states fail transiently (connection lost) before one works.
    flaky: dict[str, int]

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self.flaky = {}
        self.refused: list[str] = []

    def _store_state(self, state: TaskState) -> None:
        size = len(encode_task_state(state))
        if self.flaky.get(state.state, 0) > 0:
            self.flaky[state.state] -= 1
            raise BackendConnectionError("connection lost")
        if size > self.limit or state.state in self.refuse:
            self.refused.append(state.state)
            raise BackendError(f"task {state.task_uuid}: {size} bytes is over the limit", retryable=False)
        super()._store_state(state)


class CallbackThreadBackend(LimitedBackend):
    """Resolves a deferred final store (``_store_states(..., wait=False)``) from a sending thread
    that holds the lock every store takes, as a batching store does: a store made from inside
    the completion's callbacks would wait forever."""

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self.sending = threading.Lock()

    def _store_state(self, state: TaskState) -> None:
        if not self.sending.acquire(timeout=3):
            raise AssertionError("a store was made from the sending thread (it would deadlock)")
        try:
            super()._store_state(state)
        finally:
            self.sending.release()

    def _store_states(self, states: Sequence[TaskState], *, wait: bool = True) -> Completion:
        if wait or not any(st.is_completed for st in states):
            return super()._store_states(states, wait=wait)
        stored = Completion()

        def send() -> None:
            error: BaseException | None = None
            with self.sending:
                if any(len(encode_task_state(st)) > self.limit for st in states):
                    error = BackendError("over the limit", retryable=False)
                else:
                    for st in states:
                        MemoryBackend._store_state(self, st)
                stored.resolve(error)

        threading.Thread(target=send).start()
        return stored


def limited_server(backend_cls: type[LimitedBackend] = LimitedBackend) -> tuple[Server, LimitedBackend, list[str]]:
    name = uuid.uuid4().hex
    config = Config(broker=f"memory://{name}", result_backend=f"memory://{name}")
    backend = backend_cls(f"memory://{name}", config)
    srv = Server(config, backend=backend)
    runs: list[str] = []

    @srv.task("big")
    def big(n: int) -> str:
        runs.append("big")
        return "x" * n

    @srv.task("add")
    def add(*args: int) -> int:
        return sum(args)

    return srv, backend, runs


def test_a_result_the_backend_can_never_store_becomes_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    srv, _backend, runs = limited_server()
    w = srv.new_worker("p", 2)
    w.backend_error_requeue_delay = 0.05
    w.launch_in_background()
    try:
        r = srv.send_task(Signature("big", args=[Arg("int64", 10_000)]))
        with pytest.raises(TaskFailedError) as info:
            r.get(timeout=5)
        assert "the result backend cannot store this task's state" in info.value.error
        assert "BackendError" in info.value.error and "over the limit" in info.value.error
        assert len(info.value.error) < 1200
        # the same through the synchronous store (a chain: the next step is sent after it)
        chain = Chain(Signature("big", args=[Arg("int64", 10_000)]), Signature("add"))
        with pytest.raises(TaskFailedError):
            srv.send_chain(chain).get(timeout=5)
        assert srv.backend.get_state(chain.tasks[1].uuid) is None  # the next step was not sent
        time.sleep(0.3)  # many redelivery delays: nothing runs again
        assert runs == ["big", "big"]
        assert srv.get_pending_tasks() == [] and srv.broker.dead_letters() == []  # type: ignore[attr-defined]
        assert any("stored FAILURE instead" in rec.getMessage() for rec in caplog.records)
        assert srv.send_task(Signature("big", args=[Arg("int64", 10)])).get(timeout=5) == "x" * 10
    finally:
        w.quit(timeout=10)


def test_when_even_the_failure_cannot_be_stored_the_message_is_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    srv, backend, runs = limited_server()
    backend.refuse = frozenset({"FAILURE"})
    w = srv.new_worker("p", 1)
    w.backend_error_requeue_delay = 0.05
    w.launch_in_background()
    try:
        sig = Signature("big", args=[Arg("int64", 10_000)])
        srv.send_task(sig)
        deadline = time.monotonic() + 5
        while not srv.broker.dead_letters() and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        assert [json.loads(b)["UUID"] for b in srv.broker.dead_letters()] == [sig.uuid]  # type: ignore[attr-defined]
        time.sleep(0.3)
        assert runs == ["big"] and backend.refused == ["SUCCESS", "FAILURE"]
        assert srv.get_pending_tasks() == []
        assert any("failed too" in rec.getMessage() and "dropping" in rec.getMessage() for rec in caplog.records)
    finally:
        w.quit(timeout=10)


def test_transient_errors_still_redeliver(caplog: pytest.LogCaptureFixture) -> None:
    srv, backend, runs = limited_server()
    backend.flaky = {"SUCCESS": 1, "FAILURE": 1}
    w = srv.new_worker("p", 1)
    w.backend_error_requeue_delay = 0.05
    w.launch_in_background()
    try:
        # SUCCESS: connection lost once, then stored on the redelivery
        assert srv.send_task(Signature("big", args=[Arg("int64", 5)])).get(timeout=5) == "xxxxx"
        assert runs == ["big", "big"]
        # too big for good, and the FAILURE that replaces it is lost once: redelivered, then stored
        with pytest.raises(TaskFailedError):
            srv.send_task(Signature("big", args=[Arg("int64", 10_000)])).get(timeout=5)
        assert runs == ["big"] * 4
        assert any("giving the message back" in rec.getMessage() for rec in caplog.records)
    finally:
        w.quit(timeout=10)


def test_the_failure_is_not_stored_from_the_backends_sending_thread() -> None:
    srv, _backend, runs = limited_server(CallbackThreadBackend)
    w = srv.new_worker("p", 1).launch_in_background()
    try:
        assert srv.send_task(Signature("big", args=[Arg("int64", 5)])).get(timeout=5) == "xxxxx"
        with pytest.raises(TaskFailedError) as info:
            srv.send_task(Signature("big", args=[Arg("int64", 10_000)])).get(timeout=5)
        assert "over the limit" in info.value.error
        assert srv.get_pending_tasks() == []
        assert runs == ["big", "big"]
    finally:
        w.quit(timeout=10)


def test_send_stores_pending_then_publishes_by_default(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    backend, broker = server.backend, server.broker
    store, publish = backend.set_state_pending, broker.publish
    monkeypatch.setattr(backend, "set_state_pending", lambda sig: (order.append("pending"), store(sig))[1])
    monkeypatch.setattr(broker, "publish", lambda body, sig: (order.append("publish"), publish(body, sig))[1])
    assert server.plugins.fused_publisher(broker, backend) is None
    server.send_task(Signature("add", args=[Arg("int64", 1)]))
    assert order == ["pending", "publish"]


# -- the success path: store, then hook, then follow-ups ---------------------------------------


class SuccessOrderBackend(MemoryBackend):
    """Records how SUCCESS is stored, into a log shared with a hook recorder and ``send_task``:
    ``store_then`` for a deferred store (``wait=False``), ``stored`` once written. The next
    ``then_errors`` deferred SUCCESS stores fail (connection lost)."""

    def __init__(self, url: str, config: Config, log: list[tuple[str, str]]) -> None:
        super().__init__(url, config)
        self.log = log
        self.then_errors = 0

    def _store_state(self, state: TaskState) -> None:
        super()._store_state(state)
        if state.state == "SUCCESS":
            self.log.append(("stored", state.task_name))

    def _store_states(self, states: Sequence[TaskState], *, wait: bool = True) -> Completion:
        if not wait and any(st.state == "SUCCESS" for st in states):
            self.log.append(("store_then", states[0].task_name))
            if self.then_errors > 0:
                self.then_errors -= 1
                return Completion.failed(BackendConnectionError("connection lost"))
        return super()._store_states(states, wait=wait)


def test_success_stores_then_fires_the_hook_then_sends_follow_ups(monkeypatch: pytest.MonkeyPatch) -> None:
    from machinery import hookimpl
    from machinery.events import TaskEvent
    from machinery.plugins import PluginHost

    log: list[tuple[str, str]] = []

    class Succeeded:
        @hookimpl
        def machinery_task_succeeded(self, event: TaskEvent) -> None:
            assert event.runtime is not None and event.runtime >= 0 and event.results is not None
            log.append(("hook", f"{event.signature.name}={[r.value for r in event.results]}"))

    host = PluginHost(load_entry_points=False)
    host.pm.register(Succeeded(), name="succeeded")
    name = uuid.uuid4().hex
    config = Config(broker=f"memory://{name}", result_backend=f"memory://{name}", lock=f"memory://{name}")
    backend = SuccessOrderBackend(f"memory://{name}", config, log)
    srv = Server(config, backend=backend, plugins=host)
    for task in ("first", "second", "member", "join"):
        srv.register_task(task, lambda *args: sum(args))
    send = srv.send_task
    monkeypatch.setattr(srv, "send_task", lambda sig: (log.append(("send", sig.name)), send(sig))[1])

    def hooked(last: str) -> None:  # get() returns once stored: the hook may still be firing
        deadline = time.monotonic() + 5
        while log[-1:] != [("hook", last)] and time.monotonic() < deadline:
            time.sleep(0.005)

    w = srv.new_worker("order", 1)
    w.backend_error_requeue_delay = 0.05
    w.launch_in_background()
    try:
        # no follow-ups: a deferred store (wait=False), the hook fires once it is stored
        # and not for the attempt whose store failed (that message is redelivered)
        backend.then_errors = 1
        assert send(Signature("first", args=[Arg("int64", 1)])).get(timeout=5) == 1
        hooked("first=[1]")
        assert log == [("store_then", "first"), ("store_then", "first"), ("stored", "first"), ("hook", "first=[1]")]
        # an on_success callback: stored synchronously, hook, then the callback is sent
        log.clear()
        chain = Chain(Signature("first", args=[Arg("int64", 2)]), Signature("second", args=[Arg("int64", 3)]))
        assert srv.send_chain(chain).get(timeout=5) == 5
        hooked("second=[5]")
        assert log == [
            ("send", "first"),  # by send_chain
            ("stored", "first"),
            ("hook", "first=[2]"),
            ("send", "second"),
            ("store_then", "second"),
            ("stored", "second"),
            ("hook", "second=[5]"),
        ]
        # a chord's member: stored synchronously, hook, then the chord callback is sent
        log.clear()
        chord = Chord(Group(Signature("member", args=[Arg("int64", 4)])), Signature("join"))
        assert srv.send_chord(chord).get(timeout=5) == 4
        hooked("join=[4]")
        assert log == [
            ("stored", "member"),
            ("hook", "member=[4]"),
            ("send", "join"),
            ("store_then", "join"),
            ("stored", "join"),
            ("hook", "join=[4]"),
        ]
    finally:
        w.quit(timeout=10)


def test_an_idle_worker_has_nothing_in_flight_and_logs_its_stop_once(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The consumer's slot reserved while it waits for the broker is no task in flight, and the
    'stopped' line comes once (from the logging plugin's worker_stopped hook), not twice."""
    caplog.set_level(logging.INFO, logger="machinery")
    w = server.new_worker("idle", 2)
    w.launch_in_background()
    end = time.monotonic() + 5
    while w._dispatch._reserved == 0 and time.monotonic() < end:
        time.sleep(0.01)
    assert w._dispatch._reserved == 1, "the consumer never reserved a slot"
    assert w._inflight == 0
    w.quit(timeout=10)
    stopped = [r for r in caplog.records if r.getMessage() == "worker idle stopped"]
    assert len(stopped) == 1, [r.getMessage() for r in caplog.records]


def test_the_requeue_delay_of_an_unknown_task_is_jittered() -> None:
    """Given back with a fixed delay, an unknown task came back at the same point of the idle
    consumers' one-second blocking pops each time, and the same wrong worker won it again
    (interop: a Go-only task never reached the idle Go worker in 20 s)."""
    from machinery.worker import _jittered

    delays = [_jittered(5.0) for _ in range(500)]
    assert all(2.5 <= d < 7.5 for d in delays)
    assert max(delays) - min(delays) > 2.0  # spread over more than a second
    assert _jittered(0.0) == 0.0


def test_quit_gives_back_a_message_read_ahead_and_not_started(server: Server) -> None:
    """Read-ahead (``worker.prefetch``): while tasks are quick the worker takes one message
    beyond its concurrency; a warm shutdown finishes the running task and hands that one back."""
    ran: list[Any] = []
    started, release = threading.Event(), threading.Event()

    @server.task("quick")
    def quick(n: int) -> int:
        ran.append(n)
        return n

    @server.task("block")
    def block() -> None:
        started.set()
        release.wait(10)
        ran.append("block")

    w = server.new_worker("ra", 1)
    assert w.prefetch == 1  # the default
    w.launch_in_background()
    try:
        for n in range(5):
            assert server.send_task(Signature("quick", args=[n])).get(timeout=10) == n
        server.send_task(Signature("block"))
        assert started.wait(10)
        server.send_task(Signature("quick", args=[99]))
        deadline = time.monotonic() + 5
        while w._dispatch.waiting != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w._dispatch.waiting == 1  # read ahead while "block" runs
        w.quit(wait=False)
        while not w._dispatch._stopping and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        release.set()
        w.quit(timeout=10)
    assert ran == [0, 1, 2, 3, 4, "block"]
    assert [s.args[0].value for s in server.get_pending_tasks()] == [99]


def test_prefetch_zero_takes_a_message_only_for_a_free_thread(server: Server) -> None:
    started, release = threading.Event(), threading.Event()

    @server.task("block")
    def block() -> None:
        started.set()
        release.wait(10)

    w = server.new_worker("no-ra", 1)
    w.prefetch = 0
    w.launch_in_background()
    try:
        for _ in range(3):
            assert server.send_task(Signature("add", args=[1])).get(timeout=10) == 1
        server.send_task(Signature("block"))
        assert started.wait(10)
        server.send_task(Signature("add", args=[2]))
        time.sleep(0.3)
        assert w._dispatch.waiting == 0 and len(server.get_pending_tasks()) == 1
    finally:
        release.set()
        w.quit(timeout=10)


def test_prefetch_setting_from_config_environment_and_cli() -> None:
    from machinery.cli import build_parser
    from machinery.errors import ConfigError

    assert Config().worker_prefetch is None  # the broker's default
    cfg = Config.from_env({"MACHINERY_WORKER_PREFETCH": "4"})
    assert cfg.worker_prefetch == 4
    assert Server(cfg.replace(broker="memory://pf", result_backend="memory://pf")).new_worker().prefetch == 4
    with pytest.raises(ConfigError, match="worker_prefetch"):
        Config(worker_prefetch=-1)
    assert build_parser().parse_args(["worker", "--app", "m", "--prefetch", "0"]).prefetch == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--app", "m", "--prefetch", "-2"])


def test_the_read_ahead_defaults_to_the_brokers(tmp_path: Any) -> None:
    """Without ``worker_prefetch`` a worker reads ahead what its broker asks for: 1 on most, its
    concurrency on the embedded sqlite transport (each claim is a write transaction there); a
    ``worker_prefetch`` set in the config, 0 included, wins."""
    url = f"sqlite:///{tmp_path / 'ra.db'}"
    memory = Server(Config(broker="memory://ra", result_backend="memory://ra"))
    sqlite = Server(Config(broker=url, result_backend=url))
    try:
        assert memory.new_worker("m", 8).prefetch == 1
        assert sqlite.new_worker("s", 8).prefetch == 8
        assert sqlite.new_worker("s", 3).prefetch == 3
        for set_to in (0, 2):
            pinned = Server(Config(broker=url, result_backend=url, worker_prefetch=set_to))
            assert pinned.new_worker("p", 8).prefetch == set_to
            pinned.close()
    finally:
        memory.close()
        sqlite.close()
