"""arq (asyncio) on Redis. Runs in its own environment: arq 0.28 requires redis-py < 6.

Worker: ``arq bench_arq.WorkerSettings`` with ``max_jobs = 8`` (from ``BENCH_CONCURRENCY``). arq polls its queue (a sorted
set) every ``poll_delay`` seconds and starts at most ``max_jobs`` jobs per poll; its default
(0.5 s) would cap it near 16 jobs/s, so the benchmark sets ``poll_delay = 0.001`` (and polls
results every 1 ms). "Results off" uses ``keep_result = 0``. The I/O-bound task awaits
``asyncio.sleep(0.01)`` (arq runs coroutines).
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import probe
from arq import create_pool
from arq.connections import RedisSettings

NAME = "arq"
DIST = "arq"
IMPORT = "arq"
ASYNC = True

_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_results = os.environ.get("BENCH_RESULTS", "1") == "1"
_queue = os.environ.get("BENCH_QUEUE", "arq:queue")
_concurrency = int(os.environ.get("BENCH_CONCURRENCY", "") or 8)
#: The drained task (``count``, the no-op, or ``sleep_count``, the I/O-bound one).
TASK = os.environ.get("BENCH_TASK", "") or "count"
_u = urlparse(_url)
_settings = RedisSettings(host=_u.hostname or "127.0.0.1", port=_u.port or 6379, database=int(_u.path.strip("/") or 0))


async def count(ctx: Any, x: int) -> int:
    return probe.count(x)


async def sleep_count(ctx: Any, x: int) -> int:
    await asyncio.sleep(probe.IO_SECONDS)
    return probe.count(x)


async def echo(ctx: Any, x: int) -> int:
    return probe.noop(x)


async def eta(ctx: Any, x: int, due: float) -> int:
    return probe.eta(x, due)


class WorkerSettings:
    functions = [count, sleep_count, echo, eta]
    redis_settings = _settings
    queue_name = _queue
    max_jobs = _concurrency
    poll_delay = 0.001
    keep_result = 3600 if _results else 0
    handle_signals = True


def worker_cmd(python: str, results: bool) -> list[str]:
    return [python, "-m", "arq", "bench_arq.WorkerSettings"]


WORKER_NOTE = f"`arq WorkerSettings` with `max_jobs = {_concurrency}`, `poll_delay = 0.001` (default 0.5 s)"


class Client:
    def __init__(self, results: bool) -> None:
        self.pool: Any = None

    async def start(self) -> None:
        self.pool = await create_pool(_settings, default_queue_name=_queue)

    async def enqueue(self, i: int) -> None:
        await self.pool.enqueue_job(TASK, i)

    async def roundtrip(self, i: int) -> int:
        job = await self.pool.enqueue_job("echo", i)
        return int(await job.result(timeout=30, poll_delay=0.001))

    async def eta(self, i: int, due: float) -> None:
        await self.pool.enqueue_job("eta", i, due, _defer_until=datetime.fromtimestamp(due, tz=timezone.utc))

    async def close(self) -> None:
        await self.pool.aclose()
