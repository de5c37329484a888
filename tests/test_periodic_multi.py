"""Periodic tasks across processes on each lock plugin: exactly one task per tick.

Three scheduler processes, each with its own ``Server`` (so its own lock owner), run a
``@every 1s`` entry for 10 s. The test then consumes every message from the queue and checks,
by the tick header each carries, that every tick was delivered exactly once, with no gap, and
that the schedulers' "sent" log lines name exactly the delivered task UUIDs.

Locks under test: Redis (``machinery-redis``) and DynamoDB (``machinery-sqs``, on moto). The
embedded ``sqlite://`` lock has the same test in ``core/tests/test_schedule_multiprocess.py``.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from machinery import Config, Server
from machinery.schedule import TICK_HEADER
from machinery.signature import decode_signature
from machinery.testing import require_server

SECONDS = 10.0
CHILD = textwrap.dedent(
    """
    import logging, os, signal, sys, threading
    from machinery import Config, Server, Signature
    from machinery.schedule import Scheduler

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    env = os.environ
    server = Server(Config(broker=env["P_BROKER"], result_backend=env["P_BACKEND"], lock=env["P_LOCK"],
                           default_queue=env["P_QUEUE"]))
    server.register_periodic_task("@every 1s", env["P_NAME"], Signature("tick"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _ = server.lock
    print("ready", flush=True)
    Scheduler(server).run_forever(stop)
    server.close()
    """
)
SENT = re.compile(r"machinery\.schedule: periodic '[^']+': tick (\S+) sent task (task_\S+)")


@dataclass
class Target:
    broker: str
    backend: str
    lock: str
    queue: str


def run_schedulers(tmp_path: Path, target: Target, n: int = 3) -> list[str]:
    """Run ``n`` scheduler processes for ``SECONDS``; returns their logs."""
    script = tmp_path / "periodic_child.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "P_BROKER": target.broker,
        "P_BACKEND": target.backend,
        "P_LOCK": target.lock,
        "P_QUEUE": target.queue,
        "P_NAME": f"every-second-{uuid.uuid4().hex[:8]}",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    logs = []
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")
        time.sleep(SECONDS)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            _, err = p.communicate(timeout=15)
            logs.append(err)
            assert p.returncode == 0, err
    return logs


def drain(target: Target, idle: float = 2.0) -> list[tuple[str, str]]:
    """Consume (and ack) every message of the queue: (tick header, task UUID) pairs."""
    server = Server(Config(broker=target.broker, result_backend=target.backend, default_queue=target.queue))
    stop = threading.Event()
    last = [time.monotonic()]

    def watchdog() -> None:
        while not stop.is_set():
            if time.monotonic() - last[0] > idle:
                stop.set()
            time.sleep(0.1)

    threading.Thread(target=watchdog, daemon=True).start()
    out = []
    try:
        for d in server.broker.consume(target.queue, prefetch=16, stop=stop):
            sig = decode_signature(d.body)
            out.append((str(sig.headers[TICK_HEADER]), sig.uuid))
            server.broker.ack(d)
            last[0] = time.monotonic()
    finally:
        stop.set()
        server.close()
    return out


def check_exactly_once(delivered: list[tuple[str, str]], logs: list[str]) -> None:
    counts = Counter(tick for tick, _ in delivered)
    dupes = {t: c for t, c in counts.items() if c != 1}
    assert not dupes, f"ticks delivered more than once: {dupes}"
    ticks = sorted(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in counts)
    gaps = [(a, b) for a, b in itertools.pairwise(ticks) if b - a != timedelta(seconds=1)]
    warnings = [
        line
        for log in logs
        for line in log.splitlines()
        if line.startswith("machinery.schedule") and not SENT.match(line)
    ]
    assert not gaps, f"missing interior ticks between {gaps}; scheduler logs: {warnings}"
    assert len(ticks) >= SECONDS - 2, f"only {len(ticks)} ticks in {SECONDS}s"
    logged = [m.groups() for log in logs for m in SENT.finditer(log)]
    assert sorted(logged) == sorted(delivered)


@pytest.fixture
def redis_target() -> Target:
    pytest.importorskip("machinery_redis", reason="machinery-redis is not installed")
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    require_server(url, port=6379)
    return Target(url, url, url, f"periodic_{uuid.uuid4().hex[:8]}")


@pytest.fixture
def dynamodb_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    pytest.importorskip("machinery_sqs", reason="machinery-sqs is not installed")
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    require_server(endpoint, port=5000)
    for var, default in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(var, os.environ.get(var, default))
    table = f"periodic_locks_{uuid.uuid4().hex[:8]}"
    lock = f"dynamodb://us-east-1?create_tables=true&lock_table={table}&endpoint_url={endpoint}"
    local = f"sqlite:///{tmp_path / 'machinery.db'}"
    target = Target(local, local, lock, f"periodic_{uuid.uuid4().hex[:8]}")
    # create the lock table once, before three processes race to
    server = Server(Config(broker=local, result_backend=local, lock=lock))
    assert server.lock.acquire("warm-up", timedelta(seconds=1))
    server.close()
    yield target
    import boto3

    boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint).delete_table(TableName=table)


@pytest.mark.slow
def test_three_schedulers_on_redis_send_each_tick_once(tmp_path: Path, redis_target: Target) -> None:
    logs = run_schedulers(tmp_path, redis_target)
    check_exactly_once(drain(redis_target), logs)


@pytest.mark.slow
def test_three_schedulers_on_a_dynamodb_lock_send_each_tick_once(tmp_path: Path, dynamodb_target: Target) -> None:
    logs = run_schedulers(tmp_path, dynamodb_target)
    check_exactly_once(drain(dynamodb_target), logs)
