"""Taskiq with taskiq-redis: ``RedisStreamBroker`` (the Redis broker with acknowledgements) and
``RedisAsyncResultBackend``.

Worker: ``taskiq worker bench_taskiq:broker --workers 1 --max-async-tasks 8`` (async tasks; the
CLI runs one worker process under a supervising parent; ``--max-async-tasks`` from
``BENCH_CONCURRENCY``). The I/O-bound task awaits ``asyncio.sleep(0.01)``, Taskiq's own model. "Results off" runs without a result
backend. Taskiq has no ETA inside its worker: scheduled tasks need the separate
``taskiq scheduler`` process and a schedule source, so the ETA scenario is n/a.
"""

from __future__ import annotations

import asyncio
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
_concurrency = os.environ.get("BENCH_CONCURRENCY", "") or "8"
#: The drained task (``count``, the no-op, or ``sleep_count``, the I/O-bound one).
TASK = os.environ.get("BENCH_TASK", "") or "count"

broker = RedisStreamBroker(url=_url, queue_name=_queue)
if _results:
    broker = broker.with_result_backend(RedisAsyncResultBackend(redis_url=_url, result_ex_time=3600))


@broker.task(task_name="count")
async def count(x: int) -> int:
    return probe.count(x)


@broker.task(task_name="sleep_count")
async def sleep_count(x: int) -> int:
    await asyncio.sleep(probe.IO_SECONDS)
    return probe.count(x)


_drained = {"count": count, "sleep_count": sleep_count}[TASK]


@broker.task(task_name="echo")
async def echo(x: int) -> int:
    return probe.noop(x)


def worker_cmd(python: str, results: bool) -> list[str]:
    return [python, "-m", "taskiq", "worker", "bench_taskiq:broker", "--workers", "1", "--max-async-tasks", _concurrency, "--log-level", "WARNING"]


WORKER_NOTE = f"`taskiq worker --workers 1 --max-async-tasks {_concurrency}` (RedisStreamBroker, acks when the result is saved)"


class Client:
    def __init__(self, results: bool) -> None:
        self.broker = broker

    async def start(self) -> None:
        await self.broker.startup()

    async def enqueue(self, i: int) -> None:
        await _drained.kiq(i)

    async def roundtrip(self, i: int) -> int:
        task = await echo.kiq(i)
        result = await task.wait_result(check_interval=0.001, timeout=30)
        return int(result.return_value)

    async def close(self) -> None:
        await self.broker.shutdown()
