"""The backend's store contract: :class:`Completion`, the final Go operations, and the
capabilities that replace overrides (``stores_ttl``, ``counts_completed``)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

import pytest

from machinery import Config, Signature
from machinery.backend_ops import FINAL_OPERATIONS, Completion
from machinery.builtin.memory import MemoryBackend
from machinery.state import TaskResult, TaskState


def _backend(cls: type[MemoryBackend] = MemoryBackend, expire: int = 0) -> MemoryBackend:
    url = f"memory://{uuid.uuid4().hex}"
    return cls(url, Config(broker=url, result_backend=url, results_expire_in=expire))


# -- Completion ---------------------------------------------------------------------------------


def test_a_completion_runs_its_callbacks_once_resolved_on_the_resolving_thread() -> None:
    c = Completion()
    seen: list[tuple[BaseException | None, str]] = []
    c.add_done_callback(lambda e: seen.append((e, threading.current_thread().name)))
    assert not c.done() and seen == []
    with pytest.raises(TimeoutError):
        c.result(timeout=0.01)
    t = threading.Thread(target=c.resolve, name="store-thread")
    t.start()
    t.join()
    assert c.done() and seen == [(None, "store-thread")]
    c.result(timeout=0)  # stored: no error
    c.add_done_callback(lambda e: seen.append((e, threading.current_thread().name)))  # done: at once
    assert seen[-1] == (None, threading.current_thread().name)
    with pytest.raises(RuntimeError):
        c.resolve()


def test_a_failed_completion_raises_its_error_and_a_callback_error_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    error = ConnectionError("lost")
    c = Completion()
    c.add_done_callback(lambda e: 1 / 0)  # logged, the next callback still runs
    got: list[BaseException | None] = []
    c.add_done_callback(got.append)
    c.resolve(error)
    assert got == [error] and c.exception() is error
    with pytest.raises(ConnectionError):
        c.result()
    assert any("completion callback raised" in r.getMessage() for r in caplog.records)
    assert Completion.failed(error).exception() is error and Completion.stored().done()


def test_result_waits_for_another_thread() -> None:
    c = Completion()
    threading.Timer(0.05, c.resolve).start()
    c.result(timeout=5)
    assert c.done()


# -- final operations -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FINAL_OPERATIONS))
def test_a_backend_may_not_override_a_go_operation(name: str) -> None:
    with pytest.raises(TypeError, match=f"overrides {name}: the Go operations are final"):
        type("Sneaky", (MemoryBackend,), {name: lambda self, *a, **k: None})


def test_every_go_operation_is_declared_final_for_type_checkers() -> None:
    from machinery.interfaces import Backend

    for name in FINAL_OPERATIONS:
        op = getattr(Backend, name)
        assert getattr(op.fget if isinstance(op, property) else op, "__final__", False), name


def test_success_without_waiting_goes_through_store_states_and_reports_errors() -> None:
    calls: list[tuple[list[str], bool]] = []

    class Deferring(MemoryBackend):
        fail = False

        def _store_states(self, states: Sequence[TaskState], *, wait: bool = True) -> Completion:
            calls.append(([s.state for s in states], wait))
            if self.fail:
                raise ConnectionError("lost")
            return super()._store_states(states, wait=wait)

    b = _backend(Deferring)
    sig = Signature("add", uuid="task_1")
    assert b.set_state_success(sig, [TaskResult("int64", 3)], wait=False).done()
    assert calls == [(["SUCCESS"], False)]
    b.set_state_received_started(sig)
    assert calls[-1] == (["RECEIVED", "STARTED"], False)
    b.fail = True  # type: ignore[attr-defined]
    failed = b.set_state_failure(sig, "boom", wait=False)  # raised inside: reported, not raised
    assert isinstance(failed.exception(), ConnectionError)
    with pytest.raises(ConnectionError):  # an error known at once is raised
        b.set_state_received_started(sig)
    stored = b.set_state_success(sig, [], wait=True)  # the synchronous store, through _store_state
    assert stored.done() and b.get_state("task_1").state == "SUCCESS"  # type: ignore[union-attr]


# -- capabilities -----------------------------------------------------------------------------


def test_stores_ttl_writes_the_lifetime_into_the_ttl_field() -> None:
    class Dynamo(MemoryBackend):
        stores_ttl = True

    sig = Signature("add", uuid="task_ttl")
    for cls, expire, ttl in ((MemoryBackend, 60, 0), (Dynamo, 60, 60), (Dynamo, 0, 3600), (Dynamo, -1, 0)):
        b = _backend(cls, expire)
        b.set_state_pending(sig)
        assert b.get_state("task_ttl").ttl == ttl, (cls, expire)  # type: ignore[union-attr]


class Counting(MemoryBackend):
    """Go's group-completion counter kept in a dict (as AMQP keeps it in a queue)."""

    counts_completed = True

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self.counter: dict[str, list[TaskState]] = {}
        self.purged: list[str] = []

    def _mark_completed(self, group_uuid: str, state: TaskState) -> None:
        self.counter.setdefault(group_uuid, []).append(state)

    def _completed_count(self, group_uuid: str) -> int | None:
        states = self.counter.get(group_uuid)
        return None if states is None else len(states)

    def _completed_states(self, group_uuid: str) -> list[TaskState]:
        return list({s.task_uuid: s for s in self.counter.get(group_uuid, [])}.values())

    def _purge_completed(self, group_uuid: str) -> None:
        self.purged.append(group_uuid)
        self.counter.pop(group_uuid, None)


def _members(group: str, n: int) -> list[Signature]:
    return [Signature("add", uuid=f"{group}_t{i}", group_uuid=group, group_task_count=n) for i in range(n)]


def test_a_counting_backend_completes_a_group_without_a_record_by_its_count() -> None:
    b = _backend(Counting)
    assert isinstance(b, Counting)
    a, c = _members("g_go", 2)  # a Go producer's group: no record
    assert b.group_completed("g_go", 2) is False  # no counter yet
    b.set_state_success(a, [TaskResult("int64", 1)])
    assert b.group_completed("g_go", 2) is False
    b.set_state_failure(c, "boom", wait=False)
    assert b.group_completed("g_go", 2) is True
    states = b.group_task_states("g_go", 2)
    assert [(s.task_uuid, s.state) for s in states] == [(a.uuid, "SUCCESS"), (c.uuid, "FAILURE")]
    assert b.purged == ["g_go"]
    # without a counter, a non-counting backend knows nothing of such a group
    plain = _backend()
    plain.set_state_success(a, [])
    assert plain.group_completed("g_go", 2) is False and plain.group_task_states("g_go", 2) == []


def test_a_counting_backend_with_a_record_checks_every_member() -> None:
    b = _backend(Counting)
    assert isinstance(b, Counting)
    a, c = _members("g_py", 2)
    b.init_group("g_py", [a.uuid, c.uuid])
    b.set_state_success(a, [])
    b.set_state_success(a, [])  # a redelivered member counts twice: the states decide
    assert b._completed_count("g_py") == 2 and b.group_completed("g_py", 2) is False
    b.set_state_success(c, [])
    assert b.group_completed("g_py", 2) is True
    assert [s.task_uuid for s in b.group_task_states("g_py", 2)] == [a.uuid, c.uuid]  # group order
    assert b.purged == ["g_py"]
    # a member without its group fields is not counted
    b.set_state_success(Signature("add", uuid="loose"), [])
    assert "" not in b.counter


# -- chord completion in one pass -----------------------------------------------------------------


class Reads(MemoryBackend):
    """Counts the primitive reads and triggers the chord operations make."""

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self.calls: list[str] = []

    def _load_group(self, group_uuid: str):  # type: ignore[no-untyped-def]
        self.calls.append("group")
        return super()._load_group(group_uuid)

    def _load_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        self.calls.append("states")
        return super()._load_states(task_uuids)

    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        before = len(self.calls)
        won = super()._mark_chord_triggered(group_uuid)
        del self.calls[before:]  # (the memory store reads the record inside its trigger)
        self.calls.append("trigger")
        return won


def test_complete_chord_member_reads_the_group_and_its_states_once() -> None:
    b = _backend(Reads)
    assert isinstance(b, Reads)
    a, c = _members("g_one", 2)
    b.init_group("g_one", [a.uuid, c.uuid])
    b.set_state_success(a, [TaskResult("int64", 1)])
    b.calls.clear()
    assert b.complete_chord_member("g_one", 2).kind == "not_done"
    assert b.calls == ["group", "states"]  # the member that does not complete the group
    b.set_state_success(c, [TaskResult("int64", 2)])
    b.calls.clear()
    out = b.complete_chord_member("g_one", 2)
    assert out.kind == "fire"
    assert [s.results for s in out.states] == [[TaskResult("int64", 1)], [TaskResult("int64", 2)]]
    assert b.calls == ["group", "states", "trigger"]  # Go's three operations read it twice more
    b.calls.clear()
    assert b.complete_chord_member("g_one", 2).kind == "lost_race"
    assert b.calls == ["group", "states", "trigger"]
    b.calls.clear()
    assert b.complete_chord_member("g_gone", 2).kind == "missing" and b.calls == ["group"]


class CountingWithMarker(Counting):
    """A counter plus a trigger marker that needs no group record (as AMQP's marker queue)."""

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self.triggered: set[str] = set()

    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        if group_uuid in self.triggered or (group_uuid not in self.counter and self._load_group(group_uuid) is None):
            return False
        self.triggered.add(group_uuid)
        return True


def test_complete_chord_member_with_a_counter_and_no_record_uses_the_counted_states() -> None:
    b = _backend(CountingWithMarker)
    assert isinstance(b, CountingWithMarker)
    a, c = _members("g_cnt", 2)  # a Go producer's group: no record
    assert b.complete_chord_member("g_cnt", 2).kind == "missing"  # no counter, no record
    b.set_state_success(a, [TaskResult("int64", 1)])
    assert b.complete_chord_member("g_cnt", 2).kind == "not_done"
    b.set_state_failure(c, "boom")
    out = b.complete_chord_member("g_cnt", 2)
    assert out.kind == "member_failed" and out.failed is not None and out.failed.task_uuid == c.uuid
    assert [s.task_uuid for s in out.states] == [a.uuid, c.uuid]  # completion order, as Go
    assert b.purged == ["g_cnt"]
    assert b.complete_chord_member("g_cnt", 2).kind in ("missing", "lost_race")  # counter purged
    d, e = _members("g_cnt2", 2)
    b.set_state_success(e, [TaskResult("int64", 2)])
    b.set_state_success(d, [TaskResult("int64", 1)])
    fired = b.complete_chord_member("g_cnt2", 2)
    assert fired.kind == "fire" and [s.task_uuid for s in fired.states] == [e.uuid, d.uuid]


def test_a_state_without_a_uuid_is_refused_not_stored_under_the_empty_key() -> None:
    backend = MemoryBackend(f"memory://{uuid.uuid4().hex}", Config())
    try:
        for store in (
            lambda: backend.set_state_pending(Signature("add", [1])),
            lambda: backend.set_states_pending([Signature("add", [1], uuid="task_x"), Signature("add", [2])]),
            lambda: backend.set_state_started(Signature("add", [1])),
        ):
            with pytest.raises(ValueError, match="'add' has no UUID"):
                store()
        assert backend.get_state("") is None and backend.get_state("task_x") is None
    finally:
        backend.close()
