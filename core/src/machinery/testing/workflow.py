"""End-to-end tests with a real worker: :class:`WorkflowConformance`."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest

from machinery.errors import TaskFailedError
from machinery.schedule import Scheduler
from machinery.server import Server
from machinery.signature import Signature, args_of, new_uuid, parse_time
from machinery.testing._guard import SuiteBase
from machinery.testing._support import wait_until
from machinery.testing._values import every_arg
from machinery.workflow import Chain, Chord, Group

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.testing._support import WorkerHandle

__all__ = ["WorkflowConformance"]


def _runs(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _times(path: Path) -> list[float]:
    return [float(line) for line in _runs(path)]


class WorkflowConformance(SuiteBase):
    """Tasks, workflows, retries and ETA end to end, with a worker **subprocess**
    (``python -m machinery.testing.app``) consuming from the broker under test and storing
    into the backend under test. Subclass it in your plugin's tests.

    Set ``process_local = True`` only for in-process transports (``memory://``): the worker
    then runs as a thread of the test process.
    """

    _machinery_suite = True

    #: Seconds to wait for a result.
    result_timeout: ClassVar[float] = 20.0
    #: Seconds after its ETA within which a delayed or retried task must run.
    eta_tolerance: ClassVar[float] = 1.5
    #: Task threads of the worker.
    worker_concurrency: ClassVar[int] = 4
    #: Seconds the periodic test lets its schedulers run.
    periodic_window: ClassVar[float] = 3.5

    # -- fixtures -------------------------------------------------------------------------------

    @pytest.fixture
    def server(self, machinery_server: Server) -> Server:
        """The producer."""
        return machinery_server

    @pytest.fixture
    def worker(self, machinery_worker: Callable[..., WorkerHandle]) -> WorkerHandle:
        """A running worker with the standard tasks (a subprocess unless ``process_local``)."""
        return machinery_worker(concurrency=self.worker_concurrency, in_process=self.process_local)

    # -- tests ----------------------------------------------------------------------------------

    def test_single_task(self, server: Server, worker: WorkerHandle) -> None:
        """``add(1, 1)`` returns 2 (typed ``int64``) and ends SUCCESS."""
        result = server.send_task(Signature("add", args=args_of([1, 1])))
        assert result.get(timeout=self.result_timeout) == 2
        assert [(r.type, r.value) for r in result.results(timeout=1)] == [("int64", 2)]
        assert result.status == "SUCCESS"

    def test_argument_and_result_types(self, server: Server, worker: WorkerHandle) -> None:
        """Every Go argument type reaches the task with its value, and comes back as a result."""
        args = every_arg()
        result = server.send_task(Signature("echo", args=args))
        assert list(result.get(timeout=self.result_timeout)) == [a.value for a in args]

    def test_group(self, server: Server, worker: WorkerHandle) -> None:
        """A group runs every member; results come in group order and the group completes."""
        group = Group(
            Signature("add", args=args_of([1, 1])),
            Signature("add", args=args_of([5, 5])),
            Signature("multiply", args=args_of([2, 3])),
        )
        results = server.send_group(group)
        assert results.get(timeout=self.result_timeout) == [2, 10, 6]
        assert server.backend.group_completed(group.group_uuid, len(group))

    def test_chord(self, server: Server, worker: WorkerHandle) -> None:
        """``multiply(add(1, 1), add(5, 5))`` through a chord is 20."""
        chord = Chord(
            Group(Signature("add", args=args_of([1, 1])), Signature("add", args=args_of([5, 5]))), Signature("multiply")
        )
        assert server.send_chord(chord).get(timeout=self.result_timeout) == 20

    def test_chord_callback_runs_once(self, server: Server, worker: WorkerHandle, tmp_path: Path) -> None:
        """The callback of a 12-member chord runs exactly once, with every result in group order."""
        runs = tmp_path / "callback.txt"
        members = [Signature("add", args=args_of([i, i])) for i in range(12)]
        chord = Chord(Group(members), Signature("record_run", args=args_of([str(runs)])))
        assert server.send_chord(chord).get(timeout=self.result_timeout) == 1
        time.sleep(1.0)
        lines = _runs(runs)
        assert len(lines) == 1, f"the chord callback ran {len(lines)} times"
        assert json.loads(lines[0])[1:] == [2 * i for i in range(12)]

    def test_chain(self, server: Server, worker: WorkerHandle) -> None:
        """``multiply(4, add(5, 5, add(1, 1)))`` through a chain is 48."""
        chain = Chain(
            Signature("add", args=args_of([1, 1])),
            Signature("add", args=args_of([5, 5])),
            Signature("multiply", args=args_of([4])),
        )
        assert server.send_chain(chain).get(timeout=self.result_timeout) == 48

    def test_task_that_raises(self, server: Server, worker: WorkerHandle) -> None:
        """A task that raises ends FAILURE with the error string, the exception's message as
        Go stores ``err.Error()`` (``v2/worker.go``); ``get`` raises TaskFailedError."""
        result = server.send_task(Signature("raise_error", args=args_of(["boom: ✓"])))
        with pytest.raises(TaskFailedError) as info:
            result.get(timeout=self.result_timeout)
        assert info.value.error == "boom: ✓"
        assert result.status == "FAILURE"

    def test_on_error_callback(self, server: Server, worker: WorkerHandle) -> None:
        """``on_error`` callbacks are sent with the error string as their first argument."""
        callback = Signature("record_error", uuid=new_uuid())
        result = server.send_task(Signature("raise_error", args=args_of(["kaboom"]), on_error=[callback]))
        with pytest.raises(TaskFailedError):
            result.get(timeout=self.result_timeout)
        error = server.async_result(callback.uuid).get(timeout=self.result_timeout)
        assert error == "kaboom"

    @pytest.mark.slow
    def test_retry_with_backoff(self, server: Server, worker: WorkerHandle, tmp_path: Path) -> None:
        """A task failing twice with ``retry_count=3`` succeeds on its third run, after Go's
        Fibonacci back-off (1 s, then 2 s)."""
        runs = tmp_path / "runs.txt"
        result = server.send_task(Signature("fail_times", args=args_of([str(runs), 2]), retry_count=3))
        assert result.get(timeout=self.result_timeout) == 3
        t = _times(runs)
        assert len(t) == 3
        for gap, expected in zip((t[1] - t[0], t[2] - t[1]), (1.0, 2.0)):
            assert expected - 0.05 <= gap <= expected + self.eta_tolerance, f"back-off {gap:.2f}s, expected {expected}s"

    def test_retries_exhausted(self, server: Server, worker: WorkerHandle, tmp_path: Path) -> None:
        """A task still failing after its last retry ends FAILURE; it ran ``retry_count + 1`` times."""
        runs = tmp_path / "runs.txt"
        result = server.send_task(Signature("fail_times", args=args_of([str(runs), 5]), retry_count=1))
        with pytest.raises(TaskFailedError) as info:
            result.get(timeout=self.result_timeout)
        assert "planned failure 2" in info.value.error
        time.sleep(0.5)
        assert len(_runs(runs)) == 2

    def test_retry_task_later(self, server: Server, worker: WorkerHandle, tmp_path: Path) -> None:
        """A task raising ``RetryTaskLater(0.5 s)`` runs again after the delay and succeeds."""
        runs = tmp_path / "runs.txt"
        result = server.send_task(Signature("retry_later", args=args_of([str(runs), 1, 0.5])))
        assert result.get(timeout=self.result_timeout) == 2
        t = _times(runs)
        assert len(t) == 2
        assert 0.45 <= t[1] - t[0] <= 0.5 + self.eta_tolerance, f"retried after {t[1] - t[0]:.2f}s, asked 0.5s"

    def test_delayed_task(self, server: Server, worker: WorkerHandle) -> None:
        """A task with an ETA runs no earlier than it, and within ``eta_tolerance`` after."""
        eta = datetime.now(timezone.utc) + timedelta(seconds=1.5)
        result = server.send_task(Signature("now", eta=eta))
        ran_at = result.get(timeout=self.result_timeout)
        lateness = ran_at - eta.timestamp()
        assert lateness >= -0.01, f"ran {-lateness:.3f}s before its ETA"
        assert lateness <= self.eta_tolerance, f"ran {lateness:.2f}s after its ETA (bound {self.eta_tolerance}s)"

    @pytest.mark.slow
    def test_periodic_task_once_per_tick(
        self,
        machinery_config: Config,
        machinery_key_prefix: str,
        worker: WorkerHandle,
        tmp_path: Path,
    ) -> None:
        """Three schedulers (each its own server and lock owner) send an ``@every 1s`` task once
        per tick: no tick is sent twice, none is skipped."""
        path = tmp_path / "ticks.txt"
        name = f"{machinery_key_prefix}periodic"
        running: list[tuple[Server, Scheduler]] = []
        try:
            for _ in range(3):
                s = Server(machinery_config)
                s.register_periodic_task("@every 1s", name, Signature("record_tick", args=args_of([str(path)])))
                running.append((s, Scheduler(s).start()))
            time.sleep(self.periodic_window)
        finally:
            for s, scheduler in running:
                scheduler.stop()
                s.close()
        stopped = time.time()
        # let the worker run what was sent before the schedulers stopped
        wait_until(
            lambda: _runs(path) and max(parse_time(t).timestamp() for t in _runs(path)) >= stopped - 1.0 - 0.2,
            self.result_timeout,
            what="the last ticks to run",
        )
        time.sleep(0.5)
        ticks = _runs(path)
        assert all(ticks), f"a periodic message carried no tick header: {ticks}"
        dupes = sorted({t for t in ticks if ticks.count(t) > 1})
        assert not dupes, f"ticks sent more than once with 3 schedulers: {dupes}"
        times = sorted(parse_time(t).timestamp() for t in ticks)
        assert len(times) >= int(self.periodic_window) - 1, f"only {len(times)} ticks in {self.periodic_window}s"
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(abs(g - 1.0) < 1e-6 for g in gaps), f"ticks skipped or off the 1 s schedule: {ticks}"
