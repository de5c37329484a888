"""The live worker registry with real ``machinery worker`` processes on the embedded sqlite
transport: ``inspect workers`` and ``ping`` see them, a stopped worker disappears at once and a
killed one within its heartbeat expiry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery import Config, Server
from machinery.registry import WorkerInfo, heartbeat_interval, live_workers

APP = """
import time
from machinery import Config, Server

server = Server(Config.from_env())

@server.task("sleep")
def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"

@server.task("fail")
def fail() -> None:
    raise ValueError("nope")
"""


@pytest.fixture
def env(tmp_path: Path, db_path: Path) -> dict[str, str]:
    (tmp_path / "regapp.py").write_text(APP)
    e = dict(os.environ)
    e.update(
        BROKER=f"sqlite:///{db_path}",
        RESULT_BACKEND=f"sqlite:///{db_path}",
        PYTHONPATH=str(tmp_path) + os.pathsep + e.get("PYTHONPATH", ""),
        MACHINERY_WORKER_HEARTBEAT="0.5",
    )
    return e


def cli(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "machinery", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def start_worker(
    env: dict[str, str], procs: list[subprocess.Popen[str]], queue: str, tag: str
) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "machinery", "worker", "--app", "regapp", "-Q", queue, "-c", "2", "--consumer-tag", tag],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    procs.append(p)
    return p


def listed(env: dict[str, str], *extra: str) -> list[dict[str, object]]:
    out = cli(env, "inspect", "workers", "--json", *extra)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def wait_for_count(env: dict[str, str], n: int, timeout: float, *extra: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        found = listed(env, *extra)
        if len(found) == n or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_ping_fails_without_workers_and_inspect_lists_none(env: dict[str, str]) -> None:
    out = cli(env, "ping", "-Q", "nobody")
    assert out.returncode == 1
    assert "no live worker for queue 'nobody'" in out.stderr
    assert listed(env) == []


def test_two_workers_then_one_after_stop_then_none_after_sigkill(
    env: dict[str, str], workers: list[subprocess.Popen[str]], db_path: Path
) -> None:
    a = start_worker(env, workers, "qa", "alpha")
    b = start_worker(env, workers, "qb", "beta")
    found = wait_for_count(env, 2, 20)
    assert sorted(w["consumer_tag"] for w in found) == ["alpha", "beta"]
    by_tag = {w["consumer_tag"]: w for w in found}
    assert by_tag["alpha"]["pid"] == a.pid and by_tag["beta"]["pid"] == b.pid
    assert by_tag["alpha"]["queues"] == ["qa"] and by_tag["alpha"]["concurrency"] == 2
    assert by_tag["alpha"]["pool"] == "threads"
    # ping per queue, and inspect filtered by queue
    assert cli(env, "ping", "-Q", "qa").returncode == 0
    assert cli(env, "ping", "-Q", "qc").returncode == 1
    assert [w["consumer_tag"] for w in listed(env, "-Q", "qb")] == ["beta"]
    # tasks done / failed / current are reported at the next heartbeat
    server = Server(Config(broker=env["BROKER"], result_backend=env["RESULT_BACKEND"]))
    try:
        r1 = server.delay("sleep", 0.0, routing_key="qa")
        r1.get(timeout=20)
        server.delay("sleep", 3.0, routing_key="qa")
        deadline = time.monotonic() + 10
        while True:
            info = next(w for w in live_workers(server.backend, "qa"))
            if (info.tasks_done == 1 and len(info.current) == 1) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert info.tasks_done == 1 and info.tasks_failed == 0
        assert [c["name"] for c in info.current] == ["sleep"]
    finally:
        server.close()
    # a worker that stops (SIGTERM: warm shutdown) deregisters at once
    b.send_signal(signal.SIGTERM)
    assert b.wait(20) == 0
    assert [w["consumer_tag"] for w in listed(env)] == ["alpha"]
    # a worker that dies disappears within its heartbeat expiry (3 x 0.5 s)
    a.kill()
    a.wait(10)
    server = Server(Config(broker=env["BROKER"], result_backend=env["RESULT_BACKEND"]))
    try:  # in-process: at most one heartbeat (0.5 s) has passed of the 1.5 s expiry
        assert [w.consumer_tag for w in live_workers(server.backend)] == ["alpha"], "vanished before expiry"
    finally:
        server.close()
    t0 = time.monotonic()
    assert wait_for_count(env, 0, 10) == []
    assert time.monotonic() - t0 < 3 * 0.5 + 2.5
    assert cli(env, "ping", "-Q", "qa").returncode == 1


def test_ping_waits_for_a_worker_up_to_timeout(env: dict[str, str], workers: list[subprocess.Popen[str]]) -> None:
    start_worker(env, workers, "qp", "late")
    out = cli(env, "ping", "-Q", "qp", "--timeout", "20")
    assert out.returncode == 0, out.stderr
    assert "1 live worker for queue 'qp'" in out.stdout


def test_human_output(env: dict[str, str], workers: list[subprocess.Popen[str]]) -> None:
    start_worker(env, workers, "qh", "human")
    assert wait_for_count(env, 1, 20)
    out = cli(env, "inspect", "workers")
    assert out.returncode == 0
    assert ":human:" in out.stdout and "queues=qh" in out.stdout and "pool=threads" in out.stdout
    assert "1 live worker" in out.stderr


def test_worker_info_round_trip_and_bad_records() -> None:
    info = WorkerInfo("w", "t", "h", 1, ("q",), 4, current=({"uuid": "u", "name": "n", "started": 1.0},))
    assert WorkerInfo.from_json(info.to_json()) == info
    from machinery.errors import DecodeError

    with pytest.raises(DecodeError):
        WorkerInfo.from_json(b"[1]")


def test_heartbeat_env_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from machinery.errors import ConfigError

    monkeypatch.setenv("MACHINERY_WORKER_HEARTBEAT", "2.5")
    assert heartbeat_interval() == 2.5
    for bad in ("0", "-1", "x", "inf"):
        monkeypatch.setenv("MACHINERY_WORKER_HEARTBEAT", bad)
        with pytest.raises(ConfigError):
            heartbeat_interval()


def test_in_process_worker_counts_done_and_failed() -> None:
    server = Server(Config(broker="memory://reg", result_backend="memory://reg"))

    @server.task("ok")
    def ok() -> int:
        return 1

    @server.task("bad")
    def bad() -> None:
        raise ValueError("x")

    worker = server.new_worker(consumer_tag="inproc", concurrency=2, queue="qm")
    worker.heartbeat = 0.2
    worker.launch_in_background()
    try:
        for _ in range(3):
            server.delay("ok", routing_key="qm").get(timeout=10)
        r = server.delay("bad", routing_key="qm")
        server.backend.wait_for(r.task_uuid, 10)
        deadline = time.monotonic() + 5
        while True:
            (info,) = live_workers(server.backend, "qm")
            if (info.tasks_done, info.tasks_failed) == (3, 1) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert (info.tasks_done, info.tasks_failed) == (3, 1)
        assert info.consumer_tag == "inproc" and info.interval == 0.2
    finally:
        worker.quit()
    assert live_workers(server.backend) == []
    server.close()
