"""Time-limit settings: precedence, headers on the wire, config keys and environment variables,
CLI options, and the pickling the processes pool relies on. The limits themselves are enforced
end to end by machinery.testing.pools (test_pools_sqlite.py, Redis's test_pools.py)."""

from __future__ import annotations

import json
import pickle
from datetime import timedelta

import pytest

from machinery import Config, ConfigError, RetryTaskLater, Server, Signature, SoftTimeLimitExceeded, TimeLimitExceeded
from machinery.cli import build_parser
from machinery.errors import WorkerLostError
from machinery.settings import parse_memory
from machinery.signature import decode_signature, encode_signature
from machinery.task import Task
from machinery.timelimit import SOFT_TIME_LIMIT_HEADER, TIME_LIMIT_HEADER, limits_for, with_time_limit


def _noop() -> None:
    return None


def test_precedence_header_then_task_then_worker() -> None:
    task = Task("t", _noop, time_limit=10, soft_time_limit=5)
    plain = Task("p", _noop)
    sig = Signature("t")
    assert limits_for(sig, plain, None, None) == (None, None)
    assert limits_for(sig, plain, 30.0, 20.0) == (20.0, 30.0)
    assert limits_for(sig, task, 30.0, 20.0) == (5.0, 10.0)
    with_time_limit(sig, time_limit=2, soft_time_limit=1)
    assert limits_for(sig, task, 30.0, 20.0) == (1.0, 2.0)
    # a soft limit not below the hard one is dropped
    assert limits_for(Signature("t"), Task("x", _noop, time_limit=3, soft_time_limit=3), None, None) == (None, 3.0)


def test_a_bad_header_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    sig = Signature("t", headers={TIME_LIMIT_HEADER: "soon"})
    assert limits_for(sig, Task("t", _noop), 7.0, None) == (None, 7.0)
    assert "ignoring header machinery_time_limit" in caplog.text


def test_headers_on_the_wire_and_go_bytes_unchanged_without_them() -> None:
    plain = Signature("add", uuid="task_1")
    before = encode_signature(plain)
    assert b"machinery_" not in before
    limited = with_time_limit(Signature("add", uuid="task_1"), time_limit=30, soft_time_limit=25)
    body = json.loads(encode_signature(limited))
    assert body["Headers"] == {SOFT_TIME_LIMIT_HEADER: 25, TIME_LIMIT_HEADER: 30}
    back = decode_signature(encode_signature(limited))
    assert limits_for(back, Task("add", _noop), None, None) == (25.0, 30.0)
    # the header keys are the only difference: every Go-visible field is as before
    del body["Headers"]
    plain_body = json.loads(before)
    del plain_body["Headers"]
    assert body == plain_body


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        with_time_limit(Signature("x"), time_limit=0)
    with pytest.raises(ValueError, match="time_limit"):
        Task("x", _noop, time_limit=-1)
    server = Server(Config(broker="memory://tl", result_backend="memory://tl"))

    @server.task("limited", time_limit=30, soft_time_limit=25)
    def limited() -> None:
        return None

    task = server.get_registered_task("limited")
    assert (task.time_limit, task.soft_time_limit) == (30.0, 25.0)
    assert server.register_task("r", _noop, time_limit=4).time_limit == 4.0


def test_config_keys_and_environment() -> None:
    cfg = Config.from_env(
        {
            "MACHINERY_WORKER_POOL": "processes",
            "MACHINERY_TIME_LIMIT": "30",
            "MACHINERY_SOFT_TIME_LIMIT": "25.5",
            "MACHINERY_MAX_TASKS_PER_CHILD": "100",
            "MACHINERY_MAX_MEMORY_PER_CHILD": "200MB",
            "MACHINERY_MAX_CRASHES": "5",
            "MACHINERY_MAX_ABANDONED_THREADS": "2",
        }
    )
    assert cfg.worker_pool == "processes"
    assert (cfg.time_limit, cfg.soft_time_limit) == (30.0, 25.5)
    assert (cfg.max_tasks_per_child, cfg.max_memory_per_child, cfg.max_crashes) == (100, 200 * 1024, 5)
    assert cfg.max_abandoned_threads == 2
    worker = Server(cfg.replace(broker="memory://env", result_backend="memory://env")).new_worker()
    assert (worker.pool, worker.time_limit, worker.soft_time_limit) == ("processes", 30.0, 25.5)
    with pytest.raises(ConfigError, match="worker_pool"):
        Config(worker_pool="forks")
    with pytest.raises(ConfigError, match="max_memory_per_child"):
        Config.from_mapping({"max_memory_per_child": "lots"})
    assert Config.from_mapping({"time_limit": 3, "max_memory_per_child": "1G"}).max_memory_per_child == 1024**2


def test_parse_memory() -> None:
    assert parse_memory(512000) == 512000
    assert parse_memory("512000") == 512000
    assert parse_memory("200MB") == parse_memory("200 MiB") == 204800
    assert parse_memory("1.5g") == 1572864
    for bad in ("many", "-1", "5TB", True):
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_cli_options() -> None:
    args = build_parser().parse_args(
        ["worker", "--app", "m", "--pool", "processes", "--time-limit", "30", "--soft-time-limit", "25",
         "--max-tasks-per-child", "10", "--max-memory-per-child", "100MB", "--max-crashes", "2"]
    )  # fmt: skip
    assert (args.pool, args.time_limit, args.soft_time_limit) == ("processes", 30.0, 25.0)
    assert (args.max_tasks_per_child, args.max_memory_per_child, args.max_crashes) == (10, 102400, 2)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--app", "m", "--pool", "forks"])


@pytest.mark.parametrize(
    "exc",
    [SoftTimeLimitExceeded(2.5), TimeLimitExceeded(3), WorkerLostError("killed by SIGKILL"), RetryTaskLater("x", 4)],
)
def test_errors_pickle_with_their_attributes(exc: Exception) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc)
    if isinstance(exc, RetryTaskLater):
        assert isinstance(back, RetryTaskLater) and back.retry_in == timedelta(seconds=4)


def test_messages() -> None:
    assert str(TimeLimitExceeded(30)) == "time limit exceeded (30s)"
    assert str(SoftTimeLimitExceeded(25)) == "soft time limit exceeded (25s)"
    assert isinstance(SoftTimeLimitExceeded(), Exception)


def test_the_processes_pool_needs_the_app_path() -> None:
    server = Server(Config(broker="memory://pp", result_backend="memory://pp"))
    worker = server.new_worker("pp", 1)
    worker.pool = "processes"
    with pytest.raises(ValueError, match="import path"):
        worker.launch_in_background()


def test_public_process_applies_the_soft_limit_and_never_abandons() -> None:
    """``Worker.process`` (no message to settle) raises the soft limit in the calling thread; a
    hard limit cannot abandon it (nobody would settle), so the task runs to its end."""
    import time

    server = Server(Config(broker="memory://proc", result_backend="memory://proc"))

    @server.task("loop")
    def loop(seconds: float) -> str:
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(0.01)
            return "finished"
        except SoftTimeLimitExceeded:
            return "cleaned up"

    worker = server.new_worker("proc", 1)
    sig = with_time_limit(Signature("loop", args=[5.0], uuid="task_soft"), soft_time_limit=0.2)
    t0 = time.monotonic()
    assert worker.process(sig, server.get_registered_task("loop")) is False
    assert time.monotonic() - t0 < 2
    assert server.async_result("task_soft").get(timeout=1) == "cleaned up"
    sig = with_time_limit(Signature("loop", args=[0.5], uuid="task_hard"), time_limit=0.1)
    assert worker.process(sig, server.get_registered_task("loop")) is False
    assert server.async_result("task_hard").get(timeout=1) == "finished"
