"""Worker pools, time limits, recycling and crash isolation, end to end (docs/pools.md).

Every test runs a real ``machinery worker`` process (``--pool threads`` or ``--pool
processes``) on the transport under test, with real sleeping tasks, real child processes and
real signals. Adopt it like the other suites::

    class TestRedisPools(PoolConformance): ...

What a broker must support for the processes pool is only what workers already need: a
message is acknowledged after its final state is stored, so a worker (supervisor) killed
mid-task leaves the message to be delivered again (:meth:`test_message_held_past_a_hard_kill_comes_back`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from machinery import Config, Server, Signature, TaskFailedError
from machinery.testing._guard import SuiteBase
from machinery.testing.broker import require_capability
from machinery.timelimit import EXIT_RESTART, with_time_limit

__all__ = ["POOL_APP", "PoolConformance"]

#: The app every pool test's worker imports (written to ``pool_app.py``).
POOL_APP = textwrap.dedent(
    """
    import asyncio, ctypes, os, signal, time
    from machinery import Config, RetryTaskLater, Server, SoftTimeLimitExceeded, TaskContext

    server = Server(Config.from_env())
    _hoard = []

    @server.task("sleep")
    def sleep(seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    @server.task("hang", time_limit=1)
    def hang() -> None:
        time.sleep(60)

    @server.task("soft_sleep")
    def soft_sleep(seconds: float) -> str:
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(0.02)
            return "finished"
        except SoftTimeLimitExceeded:
            return "cleaned up"

    @server.task("async_soft")
    async def async_soft(seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
            return "finished"
        except SoftTimeLimitExceeded:
            return "cleaned up"

    @server.task("async_sleep")
    async def async_sleep(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "slept"

    @server.task("pid")
    def pid() -> int:
        return os.getpid()

    @server.task("die")
    def die(code: int) -> None:
        os._exit(code)

    @server.task("segfault")
    def segfault() -> None:
        ctypes.string_at(0)

    @server.task("die_once")
    def die_once(marker: str) -> int:
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    @server.task("context")
    def context(ctx: TaskContext) -> str:
        return ctx.task_uuid

    class Weird(Exception):  # does not unpickle (two arguments, one message)
        def __init__(self, a: str, b: str) -> None:
            super().__init__(f"{a}-{b}")

    @server.task("weird")
    def weird() -> None:
        raise Weird("x", "y")

    @server.task("retry_once")
    def retry_once(marker: str) -> str:
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RetryTaskLater("again", 0.2)
        return "retried"

    @server.task("rss")
    def rss() -> int:  # resident memory of this process, KiB
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    @server.task("leak")
    def leak(mib: int) -> int:
        _hoard.append(bytearray(mib * 1024 * 1024))
        return os.getpid()
    """
)


def _sig(name: str, *args: Any, **options: Any) -> Signature:
    args_list: list[Any] = list(args)
    return Signature(name, args=args_list, **options)


def _gone(pid: int) -> bool:
    """True when process ``pid`` has ended (a zombie nobody reaped yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


class PoolWorker:
    """A ``machinery worker`` subprocess for the pool tests."""

    def __init__(self, cfg: Config, directory: Path, *options: str, env: dict[str, str] | None = None) -> None:
        self.log = directory / f"worker-{time.monotonic_ns()}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(directory), os.environ.get("PYTHONPATH", "")]),
            "BROKER": cfg.broker,
            "RESULT_BACKEND": cfg.result_backend,
            "DEFAULT_QUEUE": cfg.default_queue,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        cmd = [sys.executable, "-m", "machinery", "worker", "--app", "pool_app:server", "-Q", cfg.default_queue]
        cmd += ["--broker", cfg.broker, "--backend", cfg.result_backend, "--heartbeat", "60", *options]
        # the whole config under test (the transport's sections, results_expire_in, ...) as a file
        conf = directory / f"pool-worker-{time.monotonic_ns()}.yml"  # JSON is YAML
        # (not no_unix_signals: these workers are stopped with signals)
        data: dict[str, Any] = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        data.pop("no_unix_signals")
        data["transport_options"] = {k: dict(v) for k, v in cfg.transport_options.items()}
        conf.write_text(json.dumps(data))
        cmd[4:4] = ["--config", str(conf)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class PoolConformance(SuiteBase):
    """Pools and time limits on a transport (needs ``machinery_config`` from the suite plugin)."""

    _machinery_suite = True

    @pytest.fixture
    def pool_env(self) -> dict[str, str]:
        """Extra environment variables for the worker subprocesses (a transport's options)."""
        return {}

    @pytest.fixture
    def pool_worker(self, machinery_config: Config, tmp_path: Path, pool_env: dict[str, str]) -> Iterator[Any]:
        """``pool_worker(*options)`` starts a worker subprocess and waits until it runs tasks."""
        (tmp_path / "pool_app.py").write_text(POOL_APP)
        workers: list[PoolWorker] = []
        server = Server(machinery_config)

        def start(*options: str, wait: bool = True) -> PoolWorker:
            w = PoolWorker(machinery_config, tmp_path, *options, env=pool_env)
            workers.append(w)
            if wait:
                r = server.send_task(Signature("pid"))
                try:
                    r.get(timeout=60)
                except Exception:
                    print(w.output())
                    raise
            return w

        yield start
        for w in workers:
            w.stop()
            print(f"----- worker {w.proc.args!r} -----\n{w.output()[-8000:]}")
        server.close()

    @pytest.fixture
    def producer(self, machinery_config: Config) -> Iterator[Server]:
        """A producer on the transport under test."""
        server = Server(machinery_config)
        yield server
        server.close()

    @staticmethod
    def _failure(server: Server, sig: Signature, timeout: float = 30) -> tuple[str, float]:
        t0 = time.monotonic()
        with pytest.raises(TaskFailedError) as info:
            server.send_task(sig).get(timeout=timeout, poll_interval=0.02)
        return str(info.value.error), time.monotonic() - t0

    # -- threads pool --------------------------------------------------------------------------

    def test_threads_hard_limit_fails_and_the_next_task_runs(self, pool_worker: Any, producer: Server) -> None:
        pool_worker("-c", "1")
        error, elapsed = self._failure(producer, with_time_limit(_sig("sleep", 30.0), time_limit=1))
        assert "time limit exceeded" in error
        assert elapsed < 2.0, f"FAILURE after {elapsed:.2f}s for a 1s limit"
        # the only slot was replaced: the next task runs at once
        assert producer.send_task(_sig("sleep", 0.0)).get(timeout=10) == "slept"

    def test_threads_registered_and_worker_default_limits(self, pool_worker: Any, producer: Server) -> None:
        pool_worker("-c", "2", "--time-limit", "1.5")
        error, elapsed = self._failure(producer, Signature("hang"))  # time_limit=1 at registration
        assert "time limit exceeded (1s)" in error and elapsed < 2.0
        error, elapsed = self._failure(producer, _sig("sleep", 30.0))  # the worker's default
        assert "time limit exceeded (1.5s)" in error and elapsed < 2.5

    def test_threads_soft_limit_lets_the_except_clause_run(self, pool_worker: Any, producer: Server) -> None:
        pool_worker("-c", "1")
        sig = with_time_limit(_sig("soft_sleep", 30.0), time_limit=10, soft_time_limit=0.5)
        t0 = time.monotonic()
        assert producer.send_task(sig).get(timeout=10) == "cleaned up"
        assert time.monotonic() - t0 < 2.0

    def test_threads_hard_limit_with_retries_left_retries(self, pool_worker: Any, producer: Server) -> None:
        pool_worker("-c", "1")
        sig = with_time_limit(_sig("sleep", 30.0, retry_count=1, retry_timeout=1), time_limit=0.5)
        error, _ = self._failure(producer, sig, timeout=30)
        assert "time limit exceeded" in error  # once retried (RETRY), then FAILURE

    def test_asyncio_soft_and_hard_limits(self, pool_worker: Any, producer: Server) -> None:
        pool_worker("-c", "2")
        sig = with_time_limit(_sig("async_soft", 30.0), soft_time_limit=0.5)
        assert producer.send_task(sig).get(timeout=10) == "cleaned up"
        error, elapsed = self._failure(producer, with_time_limit(_sig("async_sleep", 30.0), time_limit=1))
        assert "time limit exceeded" in error and elapsed < 2.0
        assert producer.send_task(_sig("async_sleep", 0.0)).get(timeout=10) == "slept"

    def test_threads_too_many_abandoned_threads_exit_for_a_restart(self, pool_worker: Any, producer: Server) -> None:
        w = pool_worker("-c", "1", "--max-abandoned-threads", "1")
        for _ in range(2):
            error, _ = self._failure(producer, with_time_limit(_sig("sleep", 60.0), time_limit=0.5))
            assert "time limit exceeded" in error
        assert w.proc.wait(30) == EXIT_RESTART
        assert "exiting with status 75" in w.output()

    # -- processes pool ------------------------------------------------------------------------

    def test_processes_run_tasks_in_children(self, pool_worker: Any, producer: Server) -> None:
        w = pool_worker("--pool", "processes", "-c", "2")
        pids = {producer.send_task(Signature("pid")).get(timeout=30) for _ in range(10)}
        assert w.proc.pid not in pids and 1 <= len(pids) <= 2

    def test_processes_context_retry_and_unpicklable_errors(
        self, pool_worker: Any, producer: Server, tmp_path: Path
    ) -> None:
        pool_worker("--pool", "processes", "-c", "1")
        sig = _sig("context")
        assert producer.send_task(sig).get(timeout=30) == sig.uuid
        assert producer.send_task(_sig("retry_once", str(tmp_path / "retry"))).get(timeout=30) == "retried"
        error, _ = self._failure(producer, _sig("weird"))
        assert error == "x-y"

    def test_processes_hard_limit_kills_and_replaces_the_child(self, pool_worker: Any, producer: Server) -> None:
        pool_worker("--pool", "processes", "-c", "1")
        before = producer.send_task(Signature("pid")).get(timeout=30)
        error, elapsed = self._failure(producer, with_time_limit(_sig("sleep", 30.0), time_limit=1))
        assert "time limit exceeded" in error
        assert elapsed < 2.0, f"FAILURE after {elapsed:.2f}s for a 1s limit"
        after = producer.send_task(Signature("pid")).get(timeout=60)
        assert after != before
        assert _gone(before)

    def test_processes_soft_limit_signal(self, pool_worker: Any, producer: Server) -> None:
        pool_worker("--pool", "processes", "-c", "1")
        sig = with_time_limit(_sig("soft_sleep", 30.0), time_limit=10, soft_time_limit=0.5)
        assert producer.send_task(sig).get(timeout=10) == "cleaned up"
        # SIGUSR1 interrupts even one long blocking sleep
        sig = with_time_limit(_sig("sleep", 30.0), time_limit=10, soft_time_limit=0.5)
        error, elapsed = self._failure(producer, sig)
        assert "soft time limit exceeded" in error and elapsed < 2.0

    def test_processes_max_tasks_per_child(self, pool_worker: Any, producer: Server) -> None:
        pool_worker("--pool", "processes", "-c", "2", "--max-tasks-per-child", "10", wait=False)
        pids = [producer.send_task(Signature("pid")).get(timeout=60) for _ in range(100)]
        assert len(set(pids)) == 10, sorted(set(pids))

    def test_processes_max_memory_per_child(self, pool_worker: Any, producer: Server) -> None:
        # the bound is relative to what a child holds before it leaks (client libraries differ)
        probe = pool_worker("--pool", "processes", "-c", "1")
        base_mib = producer.send_task(Signature("rss")).get(timeout=30) // 1024
        probe.stop()
        pool_worker("--pool", "processes", "-c", "1", "--max-memory-per-child", f"{base_mib + 60}MB")
        first = producer.send_task(_sig("leak", 20)).get(timeout=30)
        assert producer.send_task(_sig("leak", 20)).get(timeout=30) == first  # under the bound
        assert producer.send_task(_sig("leak", 100)).get(timeout=30) == first  # passes it: replaced after
        assert producer.send_task(Signature("pid")).get(timeout=60) != first

    def test_processes_crash_is_redelivered(self, pool_worker: Any, producer: Server, tmp_path: Path) -> None:
        w = pool_worker("--pool", "processes", "-c", "1")
        pid = producer.send_task(_sig("die_once", str(tmp_path / "died"))).get(timeout=60)
        assert (tmp_path / "died").exists() and pid != w.proc.pid
        assert "killed by SIGKILL" in w.output() and "delivering it again (death 1 of at most 3)" in w.output()

    @pytest.mark.parametrize("task", [("die", [3], "exit code 3"), ("segfault", [], "killed by SIGSEGV")])
    def test_processes_repeated_crashes_fail(self, pool_worker: Any, producer: Server, task: Any) -> None:
        name, args, how = task
        w = pool_worker("--pool", "processes", "-c", "1", "--max-crashes", "2")
        error, _ = self._failure(producer, _sig(name, *args), timeout=60)
        assert "child process died" in error and how in error and "2 times" in error
        assert producer.send_task(Signature("pid")).get(timeout=60) != w.proc.pid  # still serving

    @pytest.mark.parametrize("to", ["supervisor", "process group"])
    def test_processes_warm_shutdown(self, pool_worker: Any, producer: Server, to: str) -> None:
        """One SIGTERM, to the supervisor or (as systemd's KillMode=control-group and a terminal's
        Ctrl-C do) to every process: the running task finishes in its child and is stored."""
        w = pool_worker("--pool", "processes", "-c", "1")
        r = producer.send_task(_sig("sleep", 1.5))
        deadline = time.monotonic() + 20
        while r.status != "STARTED" and time.monotonic() < deadline:
            time.sleep(0.02)
        if to == "supervisor":
            w.proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(w.proc.pid, signal.SIGTERM)
        assert w.proc.wait(30) == 0
        assert r.get(timeout=5) == "slept"

    def test_processes_cold_shutdown_kills_the_children(self, pool_worker: Any, producer: Server) -> None:
        w = pool_worker("--pool", "processes", "-c", "1")
        child = producer.send_task(Signature("pid")).get(timeout=30)
        r = producer.send_task(_sig("sleep", 30.0))
        deadline = time.monotonic() + 20
        while r.status != "STARTED" and time.monotonic() < deadline:
            time.sleep(0.02)
        w.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child), f"child {child} still running after the worker's cold shutdown"

    def test_message_held_past_a_hard_kill_comes_back(self, pool_worker: Any, producer: Server, tmp_path: Path) -> None:
        """The supervisor SIGKILLed mid-task: its unacknowledged message is delivered to the next
        worker (how soon is the broker's redelivery: its lease, visibility timeout or connection
        loss; the test waits that long plus 30 s)."""
        broker = producer.broker
        require_capability(type(broker), "redelivers_unacked", "unacknowledged messages do not survive their consumer")
        wait = float(getattr(broker, "lease", type(broker).redelivery_timeout)) + 30
        w = pool_worker("--pool", "processes", "-c", "1")
        child = producer.send_task(_sig("pid")).get(timeout=30)
        r = producer.send_task(_sig("sleep", 3.0))
        deadline = time.monotonic() + 20
        while r.status != "STARTED" and time.monotonic() < deadline:
            time.sleep(0.02)
        w.proc.kill()
        w.proc.wait(10)
        deadline = time.monotonic() + 5  # the orphaned child ends by itself, mid-task
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child), f"child {child} still running after its supervisor was SIGKILLed"
        pool_worker("--pool", "processes", "-c", "1", wait=False)
        assert r.get(timeout=wait) == "slept"
