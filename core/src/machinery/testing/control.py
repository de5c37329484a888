"""Revoke and rate limits end to end, with real workers: :class:`ControlConformance`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest

from machinery.errors import TaskFailedError
from machinery.revoke import REVOKED
from machinery.server import Server
from machinery.signature import Signature, args_of, new_uuid
from machinery.testing._guard import SuiteBase
from machinery.testing._support import SubprocessWorker, wait_until
from machinery.testing.app import RATE_LIMITED_PER_SECOND
from machinery.workflow import Chain, Chord, Group

if TYPE_CHECKING:
    from machinery.results import AsyncResult
    from machinery.testing._support import WorkerHandle

__all__ = ["ControlConformance"]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _revoked_error(result: AsyncResult, timeout: float) -> str:
    with pytest.raises(TaskFailedError) as info:
        result.get(timeout=timeout)
    return info.value.error


class ControlConformance(SuiteBase):
    """Revocation and rate limits with worker **subprocesses** (threads when ``process_local``)
    on the broker and backend under test. Subclass it in your plugin's tests.

    Tests skip with the reason when the backend does not declare ``supports_revocation``; the
    rate-limit test runs either way, but needs ``supports_rate_limit`` to hold across workers.
    """

    _machinery_suite = True

    #: Seconds to wait for a result.
    result_timeout: ClassVar[float] = 20.0
    #: Seconds within which every worker must see a revocation (the issue's promise).
    revoke_visible_within: ClassVar[float] = 1.0
    #: Tasks and worker processes of the rate-limit test.
    rate_limited_tasks: ClassVar[int] = 100
    rate_limit_workers: ClassVar[int] = 2

    # -- fixtures -------------------------------------------------------------------------------

    @pytest.fixture
    def server(self, machinery_server: Server) -> Server:
        """The producer."""
        return machinery_server

    @pytest.fixture
    def start_worker(self, machinery_worker: Callable[..., WorkerHandle]) -> Callable[..., WorkerHandle]:
        """Start a worker with the standard tasks (a subprocess unless ``process_local``)."""

        def start(concurrency: int = 2) -> WorkerHandle:
            return machinery_worker(concurrency=concurrency, in_process=self.process_local)

        return start

    @staticmethod
    def require_revocation(server: Server) -> None:
        """Skip unless the backend stores revocations."""
        cls = type(server.backend)
        if not cls.supports_revocation:
            pytest.skip(f"{cls.__name__}.supports_revocation is False")

    # -- revoke ---------------------------------------------------------------------------------

    def test_revoked_queued_task_never_runs(
        self, server: Server, start_worker: Callable[..., WorkerHandle], tmp_path: Path
    ) -> None:
        """A task revoked while queued, before any worker started (the revocation is loaded at
        start), ends FAILURE ``revoked`` and never runs; the task after it runs."""
        self.require_revocation(server)
        runs = tmp_path / "runs.txt"
        revoked = server.send_task(Signature("record_run", args=args_of([str(runs), "revoked"])))
        kept = server.send_task(Signature("record_run", args=args_of([str(runs), "kept"])))
        revoked.revoke()
        start_worker()
        assert kept.get(timeout=self.result_timeout) == 1
        assert _revoked_error(revoked, self.result_timeout) == REVOKED
        assert [line for line in _lines(runs) if "revoked" in line] == []

    def test_revoked_eta_task_never_runs(
        self, server: Server, start_worker: Callable[..., WorkerHandle], tmp_path: Path
    ) -> None:
        """A delayed task revoked before its ETA never runs: FAILURE ``revoked`` once due."""
        self.require_revocation(server)
        start_worker()
        runs = tmp_path / "runs.txt"
        result = server.send_task(Signature("record_run", args=args_of([str(runs)])).countdown(2))
        server.revoke(result.task_uuid)
        assert _revoked_error(result, self.result_timeout) == REVOKED
        time.sleep(0.5)
        assert not runs.exists(), f"the revoked task ran: {_lines(runs)}"

    def test_revoked_task_in_retry_back_off_never_runs_again(
        self, server: Server, start_worker: Callable[..., WorkerHandle], tmp_path: Path
    ) -> None:
        """A task that failed and waits for its retry (RETRY, back-off) is revoked: it does not
        run again, and ends FAILURE ``revoked``."""
        self.require_revocation(server)
        start_worker()
        runs = tmp_path / "runs.txt"
        result = server.send_task(Signature("fail_times", args=args_of([str(runs), 5]), retry_count=3))
        wait_until(lambda: result.status == "RETRY", self.result_timeout, what="the task to wait for its retry")
        result.revoke()
        assert _revoked_error(result, self.result_timeout) == REVOKED
        assert len(_lines(runs)) == 1, f"the revoked task ran again: {len(_lines(runs))} runs"

    def test_revoke_terminate_cancels_running_async_task(
        self, server: Server, start_worker: Callable[..., WorkerHandle], tmp_path: Path
    ) -> None:
        """``terminate=True`` cancels a running ``async def`` task: FAILURE ``revoked`` within a
        couple of seconds, and the coroutine saw the cancellation."""
        self.require_revocation(server)
        start_worker()
        log = tmp_path / "async.txt"
        result = server.send_task(Signature("async_wait", args=args_of([str(log), 60.0])))
        wait_until(lambda: "start" in _lines(log), self.result_timeout, what="the async task to start")
        t0 = time.monotonic()
        result.revoke(terminate=True)
        assert _revoked_error(result, self.result_timeout) == REVOKED
        took = time.monotonic() - t0
        assert took < 3.0, f"the cancelled task ended {took:.2f}s after the revoke"
        assert _lines(log) == ["start", "cancelled"]

    def test_revoke_terminate_interrupts_running_thread_task(
        self, server: Server, start_worker: Callable[..., WorkerHandle], tmp_path: Path
    ) -> None:
        """``terminate=True`` raises ``TaskRevoked`` in a thread task that runs Python code."""
        self.require_revocation(server)
        start_worker()
        log = tmp_path / "busy.txt"
        result = server.send_task(Signature("busy_wait", args=args_of([str(log), 60.0])))
        wait_until(lambda: "start" in _lines(log), self.result_timeout, what="the thread task to start")
        server.revoke(result.task_uuid, terminate=True)
        assert _revoked_error(result, self.result_timeout) == REVOKED
        assert _lines(log) == ["start", "interrupted"]

    def test_revoke_without_terminate_lets_a_running_task_finish(
        self, server: Server, start_worker: Callable[..., WorkerHandle], tmp_path: Path
    ) -> None:
        """A plain revoke does not stop a task that already started."""
        self.require_revocation(server)
        start_worker()
        log = tmp_path / "busy.txt"
        result = server.send_task(Signature("busy_wait", args=args_of([str(log), 1.5])))
        wait_until(lambda: "start" in _lines(log), self.result_timeout, what="the task to start")
        result.revoke()
        assert result.get(timeout=self.result_timeout) == "done"

    def test_revoked_chain_stops_at_the_running_step(
        self, server: Server, start_worker: Callable[..., WorkerHandle], tmp_path: Path
    ) -> None:
        """Revoking a chain while its first step runs: that step finishes, the next step (its
        own UUID, sent by the worker afterwards) is revoked and the chain goes no further."""
        self.require_revocation(server)
        start_worker()
        log, runs = tmp_path / "busy.txt", tmp_path / "runs.txt"
        chain = Chain(
            Signature("busy_wait", args=args_of([str(log), 1.0]), immutable=True),
            Signature("record_run", args=args_of([str(runs), "step 2"]), immutable=True),
            Signature("record_run", args=args_of([str(runs), "step 3"])),
        )
        result = server.send_chain(chain)
        wait_until(lambda: "start" in _lines(log), self.result_timeout, what="the first step to start")
        result.revoke()
        first, second, third = result.async_results
        assert first.get(timeout=self.result_timeout) == "done"
        assert _revoked_error(second, self.result_timeout) == REVOKED
        time.sleep(1.0)
        assert not runs.exists(), f"a revoked chain step ran: {_lines(runs)}"
        assert third.get_state().state == "PENDING", "the step after a revoked step was sent"

    def test_revoked_chord_member_fails_the_chord(
        self, server: Server, start_worker: Callable[..., WorkerHandle], tmp_path: Path
    ) -> None:
        """A revoked chord member ends FAILURE ``revoked``; like any failed member, the chord's
        callback is then never sent."""
        self.require_revocation(server)
        runs = tmp_path / "callback.txt"
        kept, dropped = Signature("add", args=args_of([1, 1])), Signature("add", args=args_of([2, 2]))
        chord = Chord(Group(kept, dropped), Signature("record_run", args=args_of([str(runs)])))
        result = server.send_chord(chord)
        server.revoke(dropped.uuid)
        start_worker()
        assert result.group_results[0].get(timeout=self.result_timeout) == 2
        assert _revoked_error(result.group_results[1], self.result_timeout) == REVOKED
        time.sleep(1.5)
        assert not runs.exists(), "the chord callback ran although a member was revoked"
        with pytest.raises(TaskFailedError):
            result.get(timeout=1)

    def test_revoke_reaches_every_worker_within_a_second(
        self, server: Server, start_worker: Callable[..., WorkerHandle], tmp_path: Path
    ) -> None:
        """Three workers are running; tasks revoked at t0 and published at t0 + 1 s are refused
        by every worker that takes one (each worker's log shows refusals, none ran)."""
        self.require_revocation(server)
        workers = [start_worker(concurrency=2) for _ in range(3)]
        runs = tmp_path / "runs.txt"
        sigs = [Signature("record_run", args=args_of([str(runs), i]), uuid=new_uuid()) for i in range(60)]
        server.revoke(*[s.uuid for s in sigs])
        time.sleep(self.revoke_visible_within)
        # In one batch, so every worker finds some waiting: sent one by one, two workers that
        # refuse quickly can keep up with the sender and leave the third none.
        results = list(server.send_group(Group(*sigs)))
        for r in results:
            assert _revoked_error(r, self.result_timeout) == REVOKED
        assert not runs.exists(), f"{len(_lines(runs))} revoked task(s) ran"
        if not self.process_local:
            subs = [w for w in workers if isinstance(w, SubprocessWorker)]
            refused = [w.output().count("is revoked: not run") for w in subs]
            assert all(n > 0 for n in refused), f"refusals per worker: {refused} (a worker took none?)"

    # -- rate limits ----------------------------------------------------------------------------

    def test_rate_limit_across_workers(
        self, server: Server, start_worker: Callable[..., WorkerHandle], tmp_path: Path
    ) -> None:
        """100 tasks limited to 10/s on two workers: every one runs once, the whole takes at
        least 9 s, and no 3-second window holds more than 3 s of slots plus 3.

        Start times carry scheduling jitter (a task thread woken a few hundred ms late on a loaded
        machine lands in the next second beside on-time ones), so the spacing is checked over
        3-second windows here; the exact, jitter-free slot count is BackendConformance's
        ``test_rate_limit_reserve_spacing_across_threads``. A per-worker limiter (20/s on two workers)
        fails this test either way."""
        if not type(server.backend).supports_rate_limit and not self.process_local:
            pytest.skip(f"{type(server.backend).__name__}.supports_rate_limit is False (limits are per worker)")
        for _ in range(self.rate_limit_workers):
            start_worker(concurrency=4)
        runs = tmp_path / "rate.txt"
        n = self.rate_limited_tasks
        group = Group(*[Signature("rate_limited", args=args_of([str(runs), i])) for i in range(n)])
        t0 = time.monotonic()
        results = server.send_group(group)
        assert results.get(timeout=n / RATE_LIMITED_PER_SECOND + 30) == list(range(n))
        took = time.monotonic() - t0
        starts = sorted(float(line.split()[1]) for line in _lines(runs))
        indices = sorted(int(line.split()[0]) for line in _lines(runs))
        assert indices == list(range(n)), "a task was lost or ran twice"
        assert took >= (n - RATE_LIMITED_PER_SECOND) / RATE_LIMITED_PER_SECOND, f"{n} tasks took {took:.2f}s"
        assert starts[-1] - starts[0] >= 9.0, f"the starts span {starts[-1] - starts[0]:.2f}s"
        busiest = max(sum(1 for s in starts if a <= s < a + 3.0) for a in starts)
        assert busiest <= 3 * RATE_LIMITED_PER_SECOND + 3, f"{busiest} starts within three seconds"
