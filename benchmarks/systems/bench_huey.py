"""Huey on Redis, thread workers.

Worker: ``huey_consumer bench_huey.huey -k thread -w 8``. The client waits for results with
huey's ``notify_result=True`` (BLPOP instead of polling, huey's low-latency option). "Results off"
uses ``results=False``.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import probe
from huey import RedisHuey

NAME = "huey"
DIST = "huey"
IMPORT = "huey"
ASYNC = False

_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_results = os.environ.get("BENCH_RESULTS", "1") == "1"
_queue = os.environ.get("BENCH_QUEUE", "huey")

huey = RedisHuey(_queue, url=_url, results=_results, notify_result=True, utc=True)

count = huey.task(name="count")(probe.count)
echo = huey.task(name="echo")(probe.noop)
eta = huey.task(name="eta")(probe.eta)


def worker_cmd(python: str, results: bool) -> list[str]:
    return [python, "-m", "huey.bin.huey_consumer", "bench_huey.huey", "-k", "thread", "-w", "8", "-q"]


WORKER_NOTE = "`huey_consumer -k thread -w 8` (scheduler interval: its default 1 s)"


class Client:
    def __init__(self, results: bool) -> None:
        self.huey = huey

    def enqueue(self, i: int) -> None:
        count(i)

    def roundtrip(self, i: int) -> int:
        return int(echo(i).get(blocking=True, timeout=30))

    def eta(self, i: int, due: float) -> None:
        eta.schedule(args=(i, due), eta=datetime.fromtimestamp(due, tz=timezone.utc).replace(tzinfo=None))

    def close(self) -> None:
        self.huey.storage.conn.close()
