"""A real worker process and an in-process dashboard, for the HTTP and browser tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from machinery import Config, Server
from machinery_dashboard.app import Dashboard

HERE = Path(__file__).parent


@dataclass
class Env:
    """What a test gets: the producer's server, the dashboard's base URL and the worker."""

    server: Server
    url: str
    dashboard: Dashboard
    worker: subprocess.Popen[bytes]
    tmp: Path


@contextmanager
def running(
    tmp: Path, broker: str, backend: str, *, hide_args: tuple[str, ...] = (), queue: str = "machinery_tasks"
) -> Iterator[Env]:
    """A worker process on ``broker``/``backend`` (consuming ``queue``, the default queue of both
    sides) and a dashboard on a free port."""
    env = dict(os.environ, BROKER=broker, RESULT_BACKEND=backend, MACHINERY_WORKER_HEARTBEAT="1", DEFAULT_QUEUE=queue)
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "machinery", "worker", "--app", "dashapp", "-c", "4", "--consumer-tag", "dash-worker"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    server = Server(Config(broker=broker, result_backend=backend, default_queue=queue))
    dash = Dashboard(server, hide_args=hide_args, index_path=str(tmp / "index.db"))
    httpd = dash.serve("127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        from machinery.registry import live_workers

        while not live_workers(server.backend, queue):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the worker did not start:\n" + (tmp / "worker.log").read_text())
            time.sleep(0.1)
        yield Env(server, f"http://127.0.0.1:{httpd.server_address[1]}", dash, worker, tmp)
    finally:
        httpd.shutdown()
        dash.close()
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        server.close()
