"""Taskiq with taskiq-redis: ``RedisStreamBroker`` (the Redis broker with acknowledgements) and
``RedisAsyncResultBackend``.

Worker: ``taskiq worker bench_taskiq:broker --workers 1 --max-async-tasks 8`` (async tasks; the
CLI runs one worker process under a supervising parent). "Results off" runs without a result
backend. Taskiq has no ETA inside its worker: scheduled tasks need the separate
``taskiq scheduler`` process and a schedule source, so the ETA scenario is n/a.
"""

from __future__ import annotations

import os

import probe
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

NAME = "taskiq"
DIST = "taskiq"
IMPORT = "taskiq"
ASYNC = True
ETA_UNSUPPORTED = "no ETA in the worker (needs the separate `taskiq scheduler` process and a schedule source)"

_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_results = os.environ.get("BENCH_RESULTS", "1") == "1"
_queue = os.environ.get("BENCH_QUEUE", "taskiq")

broker = RedisStreamBroker(url=_url, queue_name=_queue)
if _results:
    broker = broker.with_result_backend(RedisAsyncResultBackend(redis_url=_url, result_ex_time=3600))


@broker.task(task_name="count")
async def count(x: int) -> int:
    return probe.count(x)


@broker.task(task_name="echo")
async def echo(x: int) -> int:
    return probe.noop(x)


def worker_cmd(python: str, results: bool) -> list[str]:
    return [python, "-m", "taskiq", "worker", "bench_taskiq:broker", "--workers", "1", "--max-async-tasks", "8", "--log-level", "WARNING"]


WORKER_NOTE = "`taskiq worker --workers 1 --max-async-tasks 8` (RedisStreamBroker, acks when the result is saved)"


class Client:
    def __init__(self, results: bool) -> None:
        self.broker = broker

    async def start(self) -> None:
        await self.broker.startup()

    async def enqueue(self, i: int) -> None:
        await count.kiq(i)

    async def roundtrip(self, i: int) -> int:
        task = await echo.kiq(i)
        result = await task.wait_result(check_interval=0.001, timeout=30)
        return int(result.return_value)

    async def close(self) -> None:
        await self.broker.shutdown()
