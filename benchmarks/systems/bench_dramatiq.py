"""Dramatiq on Redis (broker, and the Results middleware's Redis backend when results are on).

Worker: ``dramatiq bench_dramatiq --processes 1 --threads 8``.
"""

from __future__ import annotations

import os
import time

import dramatiq
import probe
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

NAME = "dramatiq"
DIST = "dramatiq"
IMPORT = "dramatiq"
ASYNC = False

_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_results = os.environ.get("BENCH_RESULTS", "1") == "1"
_queue = os.environ.get("BENCH_QUEUE", "default")

broker = RedisBroker(url=_url)
if _results:
    broker.add_middleware(Results(backend=RedisBackend(url=_url)))
dramatiq.set_broker(broker)

_opts = {"store_results": True} if _results else {}
count = dramatiq.actor(probe.count, actor_name="count", queue_name=_queue, max_retries=0, **_opts)
echo = dramatiq.actor(probe.noop, actor_name="echo", queue_name=_queue, max_retries=0, **_opts)
eta = dramatiq.actor(probe.eta, actor_name="eta", queue_name=_queue, max_retries=0, **_opts)


def worker_cmd(python: str, results: bool) -> list[str]:
    return [python, "-m", "dramatiq", "bench_dramatiq", "--processes", "1", "--threads", "8", "--queues", _queue]


WORKER_NOTE = "`dramatiq --processes 1 --threads 8` (Results middleware with its Redis backend for results on)"


class Client:
    def __init__(self, results: bool) -> None:
        self.broker = broker

    def enqueue(self, i: int) -> None:
        count.send(i)

    def roundtrip(self, i: int) -> int:
        return int(echo.send(i).get_result(block=True, timeout=30_000))

    def eta(self, i: int, due: float) -> None:
        delay_ms = max(0, round((due - time.time()) * 1000))
        eta.send_with_options(args=(i, due), delay=delay_ms)

    def close(self) -> None:
        self.broker.close()
