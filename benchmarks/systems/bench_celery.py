"""Celery on Redis (broker and result backend), thread pool; on RabbitMQ with ``BENCH_BROKER``.

Worker: ``celery -A bench_celery worker --pool threads -c 8`` (``-c`` from ``BENCH_CONCURRENCY``).
"Results off" uses ``task_ignore_result`` (Celery then writes no result at all). With
``BENCH_BROKER`` (an ``amqp://`` URL) the broker is RabbitMQ through kombu's py-amqp transport,
results stay in Redis; kombu publishes without publisher confirms unless
``broker_transport_options={"confirm_publish": True}`` (``BENCH_CONFIRM=1``).
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

_broker = os.environ.get("BENCH_BROKER") or _url
_confirm = os.environ.get("BENCH_CONFIRM") == "1"
_concurrency = os.environ.get("BENCH_CONCURRENCY", "") or "8"
#: The drained task (``count``, the no-op, or ``sleep_count``, the I/O-bound one).
TASK = os.environ.get("BENCH_TASK", "") or "count"

app = Celery("bench_celery", broker=_broker, backend=_url if _results else None)
app.conf.update(
    broker_transport_options={"confirm_publish": True} if _confirm else {},
    task_default_queue=_queue,
    task_ignore_result=not _results,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    worker_enable_remote_control=False,  # no pidbox exchange and queue (left on RabbitMQ otherwise)
    task_send_sent_event=False,
)

count = app.task(name="count")(probe.count)
echo = app.task(name="echo")(probe.noop)
eta = app.task(name="eta")(probe.eta)
sleep_count = app.task(name="sleep_count")(probe.sleep_count)
_drained = {"count": count, "sleep_count": sleep_count}[TASK]


def worker_cmd(python: str, results: bool) -> list[str]:
    return [
        python, "-m", "celery", "-A", "bench_celery", "worker", "--pool", "threads", "-c", _concurrency,
        "--loglevel", "WARNING", "-Q", _queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]


WORKER_NOTE = (
    f"`celery worker --pool threads -c {_concurrency} --without-gossip --without-mingle --without-heartbeat` "
    "(prefetch multiplier: its default 4; `worker_enable_remote_control=False`)"
)
if _broker.startswith("amqp"):
    WORKER_NOTE += "; RabbitMQ through kombu/py-amqp, " + (
        "publisher confirms on (`confirm_publish`)" if _confirm else "no publisher confirms (kombu's default)"
    )


class Client:
    def __init__(self, results: bool) -> None:
        self.app = app

    def enqueue(self, i: int) -> None:
        _drained.delay(i)

    def roundtrip(self, i: int) -> int:
        return int(echo.delay(i).get(timeout=30, interval=0.001))

    def eta(self, i: int, due: float) -> None:
        eta.apply_async(args=(i, due), eta=datetime.fromtimestamp(due, tz=timezone.utc))

    def close(self) -> None:
        self.app.close()
