"""Fixtures of the Go interop tests: the Go build, real servers, Go and Python worker
processes, and both producers (``nox -s go_interop``).

Each test gets its own queue, exchange, binding key and delayed-tasks key, so the tests can
share Redis and RabbitMQ with other test runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest
import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("INTEROP_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
URLS = {"redis": REDIS_URL, "amqp": AMQP_URL}
# broker-backend pairs: every broker with every result backend
COMBOS = ["redis-redis", "redis-amqp", "amqp-amqp", "amqp-redis"]


@pytest.fixture(scope="session")
def go_bin() -> Path:
    """Builds (or finds up to date) Go Machinery and the Go programs; fails loudly if it cannot."""
    proc = subprocess.run(
        ["bash", str(ROOT / "interop" / "go" / "build.sh")], capture_output=True, text=True, timeout=1200
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.fail(f"building Go Machinery failed (exit {proc.returncode}):\n{proc.stderr}", pytrace=False)
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin"


@pytest.fixture(scope="session")
def side() -> Iterator[redis.Redis]:
    """The Redis the test tasks count on (always Redis, whatever the transport under test)."""
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    yield client
    client.close()


@dataclass
class Env:
    """One test's transport: Go Machinery's environment variables, for Go and Python alike."""

    broker: str
    backend: str
    name: str
    vars: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Prefix of this test's side-channel keys in Redis."""
        return self.name

    def process_env(self) -> dict[str, str]:
        """The environment of a worker or producer process."""
        env = dict(os.environ)
        env.update(self.vars)
        return env


def make_env(combo: str, tag: str, **extra: str) -> Env:
    """A fresh transport: ``combo`` is ``<broker>-<backend>``."""
    broker, backend = combo.split("-")
    name = f"goint_{tag}_{uuid.uuid4().hex[:8]}"
    env = Env(broker, backend, name)
    env.vars = {
        "BROKER": URLS[broker],
        "RESULT_BACKEND": URLS[backend],
        "DEFAULT_QUEUE": name,
        "RESULTS_EXPIRE_IN": "600",
        "AMQP_EXCHANGE": name + "_ex",
        "AMQP_BINDING_KEY": name,
        "REDIS_DELAYED_TASKS_KEY": name + "_delayed",
        "INTEROP_REDIS_URL": REDIS_URL,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    return env


def cleanup(env: Env, side: redis.Redis) -> None:
    """Deletes what the test declared: its AMQP queues and exchange, its Redis keys."""
    for k in side.scan_iter(match=f"*{env.name}*", count=1000):
        side.delete(k)
    if "amqp" in (env.broker, env.backend):
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            ch = conn.channel()
            for q in (env.name, env.name + "_capture"):
                ch.queue_delete(q)
            ch.exchange_delete(env.name + "_ex")
        finally:
            conn.close()


class Proc:
    """A worker process whose output goes to a log file (shown when a test fails)."""

    def __init__(self, label: str, cmd: list[str], env: Env, log: Path, ready_marker: str, cwd: Path = HERE) -> None:
        self.label = label
        self.ready_marker = ready_marker
        self.log = log
        self._file = log.open("wb")
        self.popen = subprocess.Popen(cmd, env=env.process_env(), cwd=cwd, stdout=self._file, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """SIGTERM (a graceful stop for both workers), SIGKILL after 15 s."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._file.close()

    def ready(self) -> bool:
        """True once the worker logged that it consumes."""
        return self.ready_marker in self.log.read_text(errors="replace")

    def tail(self, n: int = 25, width: int = 300) -> str:
        """The last lines of the log, each cut to ``width`` characters."""
        lines = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.label} ({self.log}) ---\n" + "\n".join(line[:width] for line in lines[-n:])


class Fleet:
    """Starts Go and Python workers for one Env and stops them all."""

    def __init__(self, env: Env, go_bin: Path, logdir: Path) -> None:
        self.env = env
        self.go_bin = go_bin
        self.logdir = logdir
        self.procs: list[Proc] = []

    def go_worker(self, concurrency: int = 4) -> Proc:
        """A Go Machinery worker (goworker)."""
        n = len(self.procs)
        cmd = [str(self.go_bin / "goworker"), "-tag", f"go{n}", "-concurrency", str(concurrency)]
        p = Proc(f"go worker {n}", cmd, self.env, self.logdir / f"go-worker-{n}.log", "[*] Waiting for messages")
        self.procs.append(p)
        return p

    def py_worker(self, concurrency: int = 4) -> Proc:
        """A Python worker: ``machinery worker --app pyapp``."""
        n = len(self.procs)
        cmd = [sys.executable, "-m", "machinery", "worker", "--app", "pyapp", "-c", str(concurrency),
               "--consumer-tag", f"py{n}", "--loglevel", "info"]
        p = Proc(f"python worker {n}", cmd, self.env, self.logdir / f"py-worker-{n}.log", " ready: ")
        self.procs.append(p)
        return p

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until every worker logged that it consumes, or raises with the logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.popen.poll() is not None:
                    raise AssertionError(f"{p.label} exited with {p.popen.returncode}\n{p.tail()}")
            if all(p.ready() for p in self.procs):
                return
            time.sleep(0.05)
        raise AssertionError("workers not ready in time\n" + self.logs())

    def logs(self) -> str:
        """Every worker's log tail."""
        return "\n".join(p.tail() for p in self.procs)

    def stop(self) -> None:
        """Stops every worker."""
        for p in self.procs:
            p.stop()


@pytest.fixture
def fleet_factory(go_bin: Path, side: redis.Redis, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``fleet_factory(combo, tag) -> (env, fleet)``; everything is stopped and deleted after the test."""
    made: list[tuple[Env, Fleet]] = []

    def make(combo: str, tag: str, **extra: str) -> tuple[Env, Fleet]:
        env = make_env(combo, tag, **extra)
        fleet = Fleet(env, go_bin, tmp_path)
        made.append((env, fleet))
        return env, fleet

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for env, fleet in made:
        fleet.stop()
        if failed:
            sys.stderr.write(fleet.logs() + "\n")
        cleanup(env, side)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def go_produce(
    go_bin: Path, env: Env, scenarios: list[str], *, timeout: float = 120.0, args: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Runs goproducer; returns its JSON lines."""
    cmd = [str(go_bin / "goproducer"), "-key", env.key, "-timeout", "20s", *args, *scenarios]
    proc = subprocess.run(cmd, env=env.process_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"goproducer failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def py_produce(env: Env, scenarios: list[str], **kwargs: Any) -> list[dict[str, Any]]:
    """Runs the Python producer (this project's API) in this process."""
    sys.path.insert(0, str(HERE))
    try:
        import scenarios as py_scenarios
    finally:
        sys.path.remove(str(HERE))
    from machinery import Config, Server

    server = Server(Config.from_env(env.vars))
    try:
        return py_scenarios.run(server, scenarios, key=env.key, **kwargs)
    finally:
        server.close()
