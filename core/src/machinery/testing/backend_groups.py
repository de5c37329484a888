"""Group and chord contract tests, part of :class:`~machinery.testing.BackendConformance`:
group completion, the chord trigger (exactly once across threads and instances) and
``complete_chord_member``, the one-pass chord completion the worker uses."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar

from machinery.interfaces import Backend
from machinery.signature import Signature, args_of, new_uuid, results_for
from machinery.state import TaskResult
from machinery.testing._guard import SuiteBase

__all__ = ["GroupConformance"]


def _pairs(results: list[TaskResult] | None) -> list[tuple[str, object]]:
    return [(r.type, r.value) for r in results or ()]


class GroupConformance(SuiteBase):
    """Groups and chords (a mixin of :class:`~machinery.testing.BackendConformance`; it uses that
    class's ``backend`` and ``new_backend`` fixtures)."""

    _machinery_suite = True

    #: Concurrent callers of ``trigger_chord`` in the exactly-once test.
    chord_callers: ClassVar[int] = 50

    @staticmethod
    def signature(name: str = "add") -> Signature:
        """A signature with a fresh UUID."""
        return Signature(name, args=args_of([1, 2]), uuid=new_uuid())

    def test_group_completion(self, backend: Backend) -> None:
        """A group is completed once every member is SUCCESS or FAILURE; states come in group order."""
        group = new_uuid("group_")
        sigs = [self.signature() for _ in range(3)]
        backend.init_group(group, [s.uuid for s in sigs])
        backend.set_states_pending(sigs)
        assert not backend.group_completed(group, 3)
        backend.set_state_success(sigs[0], results_for(1))
        backend.set_state_started(sigs[1])
        assert not backend.group_completed(group, 3)
        backend.set_state_failure(sigs[1], "RuntimeError: no")
        assert not backend.group_completed(group, 3)
        backend.set_state_success(sigs[2], results_for(3))
        assert backend.group_completed(group, 3)
        states = backend.group_task_states(group, 3)
        assert [(s.task_uuid, s.state) for s in states] == [
            (sigs[0].uuid, "SUCCESS"),
            (sigs[1].uuid, "FAILURE"),
            (sigs[2].uuid, "SUCCESS"),
        ]
        assert not backend.group_completed(new_uuid("group_"), 3)

    def test_chord_trigger_exactly_once_concurrently(self, new_backend: Callable[..., Backend]) -> None:
        """``trigger_chord`` returns True to exactly one of many concurrent callers (threads with
        their own instances and connections), three groups in a row."""
        callers = self.chord_callers
        instances = [new_backend() for _ in range(min(10, callers))]
        for _round in range(3):
            group = new_uuid("group_")
            instances[0].init_group(group, [new_uuid() for _ in range(3)])
            barrier = threading.Barrier(callers)
            wins: list[bool] = []
            errors: list[BaseException] = []

            def call(
                b: Backend, group: str, barrier: threading.Barrier, wins: list[bool], errors: list[BaseException]
            ) -> None:
                try:
                    barrier.wait(10)
                    wins.append(b.trigger_chord(group))  # list.append is atomic
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [
                threading.Thread(target=call, args=(instances[i % len(instances)], group, barrier, wins, errors))
                for i in range(callers)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors, f"trigger_chord raised: {errors[0]!r}"
            assert len(wins) == callers
            assert wins.count(True) == 1, f"trigger_chord returned True {wins.count(True)} times out of {callers}"
            assert not instances[-1].trigger_chord(group), "a later caller also got True"
            meta = instances[-1].get_group_meta(group)
            assert meta is not None and meta.chord_triggered

    def _chord_group(self, backend: Backend, n: int) -> tuple[str, list[Signature]]:
        group = new_uuid("group_")
        sigs = [self.signature() for _ in range(n)]
        for s in sigs:
            s.group_uuid, s.group_task_count = group, n
        backend.init_group(group, [s.uuid for s in sigs])
        backend.set_states_pending(sigs)
        return group, sigs

    def test_complete_chord_member(self, backend: Backend) -> None:
        """``complete_chord_member``: not done until every member is final, then "fire" with the
        states in group order to exactly one caller, "lost_race" (or "missing") to the next; a
        failed member gives "member_failed" naming it; an unknown group gives "missing"."""
        group, sigs = self._chord_group(backend, 3)
        backend.set_state_success(sigs[0], results_for(1))
        assert backend.complete_chord_member(group, 3).kind == "not_done"
        backend.set_state_started(sigs[1])
        backend.set_state_success(sigs[2], results_for(3))
        assert backend.complete_chord_member(group, 3).kind == "not_done"
        backend.set_state_success(sigs[1], results_for(2))
        won = backend.complete_chord_member(group, 3)
        assert won.kind == "fire", won
        assert [(s.task_uuid, s.state, _pairs(s.results)) for s in won.states] == [
            (sigs[0].uuid, "SUCCESS", [("int64", 1)]),
            (sigs[1].uuid, "SUCCESS", [("int64", 2)]),
            (sigs[2].uuid, "SUCCESS", [("int64", 3)]),
        ]
        # the next caller: the race is lost (or, on a store that purges a fired group as Go's
        # AMQP backend does, the group is gone)
        assert backend.complete_chord_member(group, 3).kind in ("lost_race", "missing")

        group, sigs = self._chord_group(backend, 2)
        backend.set_state_success(sigs[0], results_for(1))
        backend.set_state_failure(sigs[1], "RuntimeError: no")
        failed = backend.complete_chord_member(group, 2)
        assert failed.kind == "member_failed" and failed.failed is not None
        assert (failed.failed.task_uuid, failed.failed.state) == (sigs[1].uuid, "FAILURE")
        assert backend.complete_chord_member(group, 2).kind in ("lost_race", "missing")

        assert backend.complete_chord_member(new_uuid("group_"), 3).kind == "missing"

    def test_complete_chord_member_exactly_once_concurrently(self, new_backend: Callable[..., Backend]) -> None:
        """Members finishing at once (threads with their own instances): one "fire" in all."""
        callers = min(self.chord_callers, 20)
        instances = [new_backend() for _ in range(min(10, callers))]
        group, sigs = self._chord_group(instances[0], callers)
        for i, s in enumerate(sigs):
            instances[0].set_state_success(s, results_for(i))
        barrier = threading.Barrier(callers)
        kinds: list[str] = []
        errors: list[BaseException] = []

        def call(b: Backend) -> None:
            try:
                barrier.wait(10)
                kinds.append(b.complete_chord_member(group, callers).kind)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(instances[i % len(instances)],)) for i in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, f"complete_chord_member raised: {errors[0]!r}"
        assert len(kinds) == callers and kinds.count("fire") == 1, kinds
        # the others lost the race, or (a store that purges a fired group, as Go's AMQP backend
        # does) found it gone or, reading its counter while the winner purges it, not complete
        assert set(kinds) - {"fire"} <= {"lost_race", "missing", "not_done"}, kinds

    def test_chord_trigger_unknown_group(self, backend: Backend) -> None:
        """``trigger_chord`` on a group that was never recorded returns False."""
        assert backend.trigger_chord(new_uuid("group_")) is False
