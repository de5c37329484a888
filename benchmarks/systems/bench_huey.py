"""Huey on Redis, thread workers; on its SQLite storage when ``BENCH_SQLITE`` names a file.

Worker: ``huey_consumer bench_huey.huey -k thread -w 8`` (``-w`` from ``BENCH_CONCURRENCY``). On
Redis the client waits for results with huey's ``notify_result=True`` (BLPOP instead of polling,
huey's low-latency option) and the consumer's dequeue blocks. SQLite has neither: the consumer
polls the table, so it runs with ``-d 0.001 -m 0.01`` (first idle poll after 1 ms, at most 10 ms
apart, instead of its defaults 0.1 s and 10 s) and the client polls the result every 1 ms.
"Results off" uses ``results=False``.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import probe
from huey import RedisHuey, SqliteHuey

NAME = "huey"
DIST = "huey"
IMPORT = "huey"
ASYNC = False

_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_results = os.environ.get("BENCH_RESULTS", "1") == "1"
_queue = os.environ.get("BENCH_QUEUE", "huey")

_sqlite = os.environ.get("BENCH_SQLITE", "")
_concurrency = os.environ.get("BENCH_CONCURRENCY", "") or "8"
#: The drained task (``count``, the no-op, or ``sleep_count``, the I/O-bound one).
TASK = os.environ.get("BENCH_TASK", "") or "count"

if _sqlite:
    huey = SqliteHuey(_queue, filename=_sqlite, results=_results, utc=True)
else:
    huey = RedisHuey(_queue, url=_url, results=_results, notify_result=True, utc=True)

count = huey.task(name="count")(probe.count)
echo = huey.task(name="echo")(probe.noop)
eta = huey.task(name="eta")(probe.eta)
sleep_count = huey.task(name="sleep_count")(probe.sleep_count)
_drained = {"count": count, "sleep_count": sleep_count}[TASK]


def worker_cmd(python: str, results: bool) -> list[str]:
    poll = ["-d", "0.001", "-m", "0.01"] if _sqlite else []
    return [python, "-m", "huey.bin.huey_consumer", "bench_huey.huey", "-k", "thread", "-w", _concurrency, *poll, "-q"]


WORKER_NOTE = f"`huey_consumer -k thread -w {_concurrency}` (scheduler interval: its default 1 s)"
if _sqlite:
    WORKER_NOTE = (
        f"`SqliteHuey`, `huey_consumer -k thread -w {_concurrency} -d 0.001 -m 0.01` (idle polls 1 to 10 ms apart; "
        "huey's SQLite storage cannot block), the client polls results every 1 ms"
    )


class Client:
    def __init__(self, results: bool) -> None:
        self.huey = huey

    def enqueue(self, i: int) -> None:
        _drained(i)

    def roundtrip(self, i: int) -> int:
        if not _sqlite:
            return int(echo(i).get(blocking=True, timeout=30))
        result = echo(i)  # SQLite: poll every 1 ms (huey's own blocking get starts at 0.1 s)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            value = result.get()
            if value is not None:
                return int(value)
            time.sleep(0.001)
        raise TimeoutError(f"no result for round trip {i} within 30 s")

    def eta(self, i: int, due: float) -> None:
        eta.schedule(args=(i, due), eta=datetime.fromtimestamp(due, tz=timezone.utc).replace(tzinfo=None))

    def close(self) -> None:
        if not _sqlite:
            self.huey.storage.conn.close()
