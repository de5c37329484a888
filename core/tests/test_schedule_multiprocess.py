"""Three scheduler processes on the embedded default (``sqlite://``): one task per tick.

Each process runs :class:`~machinery.schedule.Scheduler` on its own ``Server`` for a ``@every 1s``
entry; afterwards the test consumes every message from the queue and checks, by the tick
header each one carries, that every tick was delivered exactly once with no gap.
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
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from machinery import Config, Server
from machinery.schedule import TICK_HEADER
from machinery.signature import decode_signature

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
QUEUE = f"periodic_{uuid.uuid4().hex[:8]}"
SENT = re.compile(r"machinery\.schedule: periodic '[^']+': tick (\S+) sent task (task_\S+)")


def run_schedulers(tmp_path: Path, broker: str, backend: str, lock: str, seconds: float, n: int = 3) -> list[str]:
    """Run ``n`` scheduler processes for ``seconds``; returns their stderr (logs)."""
    script = tmp_path / "periodic_child.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "P_BROKER": broker,
        "P_BACKEND": backend,
        "P_LOCK": lock,
        "P_QUEUE": QUEUE,
        "P_NAME": f"every-second-{uuid.uuid4().hex[:8]}",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")
        time.sleep(seconds)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        logs = []
        for p in procs:
            _, err = p.communicate(timeout=15)
            logs.append(err)
            assert p.returncode == 0, err
    return logs


def drain(broker_url: str, idle: float = 2.0) -> list[tuple[str, str]]:
    """Consume (and ack) every message in the queue: (tick header, task UUID) pairs."""
    server = Server(Config(broker=broker_url, result_backend=broker_url, default_queue=QUEUE))
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
        for d in server.broker.consume(QUEUE, prefetch=16, stop=stop):
            sig = decode_signature(d.body)
            out.append((str(sig.headers[TICK_HEADER]), sig.uuid))
            server.broker.ack(d)
            last[0] = time.monotonic()
    finally:
        stop.set()
        server.close()
    return out


def check_exactly_once(delivered: list[tuple[str, str]], logs: list[str], seconds: float) -> None:
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
    assert len(ticks) >= seconds - 2, f"only {len(ticks)} ticks in {seconds}s"
    # what the schedulers logged as sent is exactly what was delivered, UUIDs included
    logged = [m.groups() for log in logs for m in SENT.finditer(log)]
    assert sorted(logged) == sorted(delivered)


@pytest.mark.slow
def test_three_scheduler_processes_on_sqlite_send_each_tick_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'machinery.db'}"
    seconds = 10.0
    logs = run_schedulers(tmp_path, url, url, url, seconds)
    check_exactly_once(drain(url), logs, seconds)
