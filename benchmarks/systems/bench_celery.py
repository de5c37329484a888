"""Celery on Redis (broker and result backend), thread pool.

Worker: ``celery -A bench_celery worker --pool threads -c 8``. "Results off" uses
``task_ignore_result`` (Celery then writes no result at all).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import probe
from celery import Celery

NAME = "celery"
DIST = "celery"
IMPORT = "celery"
ASYNC = False

_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_results = os.environ.get("BENCH_RESULTS", "1") == "1"
_queue = os.environ.get("BENCH_QUEUE", "celery")

app = Celery("bench_celery", broker=_url, backend=_url if _results else None)
app.conf.update(
    task_default_queue=_queue,
    task_ignore_result=not _results,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    task_send_sent_event=False,
)

count = app.task(name="count")(probe.count)
echo = app.task(name="echo")(probe.noop)
eta = app.task(name="eta")(probe.eta)


def worker_cmd(python: str, results: bool) -> list[str]:
    return [
        python, "-m", "celery", "-A", "bench_celery", "worker", "--pool", "threads", "-c", "8",
        "--loglevel", "WARNING", "-Q", _queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]


WORKER_NOTE = "`celery worker --pool threads -c 8 --without-gossip --without-mingle --without-heartbeat`"


class Client:
    def __init__(self, results: bool) -> None:
        self.app = app

    def enqueue(self, i: int) -> None:
        count.delay(i)

    def roundtrip(self, i: int) -> int:
        return int(echo.delay(i).get(timeout=30, interval=0.001))

    def eta(self, i: int, due: float) -> None:
        eta.apply_async(args=(i, due), eta=datetime.fromtimestamp(due, tz=timezone.utc))

    def close(self) -> None:
        self.app.close()
