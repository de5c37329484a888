"""The worker registry on Redis with real worker processes: keys ``machinery_py:worker:<id>``
with a TTL, listed by ``machinery inspect workers``, gone at once after a stop and after the
expiry after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

APP = """
from machinery import Config, Server

server = Server(Config.from_env())

@server.task("noop")
def noop() -> None:
    return None
"""


def test_two_workers_listed_then_one_then_none(url: str, raw: redis.Redis, queue: str, tmp_path: Path) -> None:
    (tmp_path / "redisregapp.py").write_text(APP)
    env = dict(os.environ, BROKER=url, RESULT_BACKEND=url, MACHINERY_WORKER_HEARTBEAT="0.5")
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "machinery", "worker", "--app", "redisregapp", "-Q", queue, "-c", "1"]
    procs = [subprocess.Popen([*cmd, "--consumer-tag", t], env=env, stderr=subprocess.DEVNULL) for t in ("r1", "r2")]

    def listed() -> list[dict[str, object]]:
        out = subprocess.run(
            [sys.executable, "-m", "machinery", "inspect", "workers", "-Q", queue, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return list(json.loads(out.stdout))

    def wait(n: int, timeout: float) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while True:
            found = listed()
            if len(found) == n or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    try:
        found = wait(2, 30)
        assert sorted(w["consumer_tag"] for w in found) == ["r1", "r2"]
        keys = {k.decode() for k in raw.scan_iter(match="machinery_py:worker:*")}
        mine = {k for k in keys if any(f":{p.pid}:" in k for p in procs)}
        assert len(mine) == 2
        assert all(0 < raw.pttl(k) <= 1500 for k in mine), "each record carries a TTL of 3 heartbeats"
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(30) == 0
        assert [w["consumer_tag"] for w in listed()] == ["r2"], "a stopped worker is removed at once"
        procs[1].kill()
        procs[1].wait(10)
        assert wait(0, 10) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
