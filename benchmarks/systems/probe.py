"""Instrumentation shared by every system's tasks (needs only redis-py).

The benchmarked task is a no-op returning its int argument; :func:`count` wraps it so that the
worker itself records when it ran the first and the N-th task, and every 500th (a few Redis writes
per run, not per task), and :func:`eta` records how late a delayed task started (one ``RPUSH`` per task, identical
for every system). The orchestrator reads ``bench:done`` and ``bench:eta`` from the benchmark's
private Redis server.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

DONE_KEY = "bench:done"
FIRST_KEY = "bench:first"
PROGRESS_KEY = "bench:progress"
PROGRESS_EVERY = 500
ETA_KEY = "bench:eta"

_N = int(os.environ.get("BENCH_N", "0") or 0)
_counter = itertools.count(1)  # next() is atomic under the GIL: safe from task threads
_first: list[float] = []
_client: Any = None


def _redis() -> Any:
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


def noop(x: int) -> int:
    """The benchmarked task body."""
    return x


def count(x: int) -> int:
    """Run the task body and note the first start, every 500th completion and the N-th."""
    if not _first:
        _first.append(time.time())
        _redis().set(FIRST_KEY, repr(_first[0]))
    value = noop(x)
    k = next(_counter)
    if k == _N:
        _redis().set(DONE_KEY, f"{_first[0]!r} {time.time()!r}")
    elif k % PROGRESS_EVERY == 0:
        _redis().rpush(PROGRESS_KEY, f"{k} {time.time()!r}")
    return value


#: The I/O-bound task's wait (seconds): a blocking sleep, as a call to a slow service would be.
IO_SECONDS = 0.01


def sleep_count(x: int) -> int:
    """The I/O-bound task: sleep :data:`IO_SECONDS` (10 ms), then :func:`count`."""
    time.sleep(IO_SECONDS)
    return count(x)


def eta(x: int, due: float) -> int:
    """Record ``start - due`` (seconds) for a task scheduled to start at ``due`` (Unix time)."""
    _redis().rpush(ETA_KEY, repr(time.time() - due))
    return noop(x)


COUNT_KEY = "bench:count"
#: Iterations of :func:`cpu`'s loop: about 5 ms of pure Python on the benchmark machine.
CPU_ITERATIONS = 75_000


def count_shared(x: int) -> int:
    """:func:`count` for workers that run tasks in several processes (machinery's processes
    pool): the count is kept in Redis (one pipelined round trip per task: ``SET NX`` of the
    first start, ``INCR``), so the N-th task is seen whichever process runs it. The pool
    variants compared with each other all use it."""
    r = _redis()
    pipe = r.pipeline(transaction=False)
    pipe.set(FIRST_KEY, repr(time.time()), nx=True)
    pipe.incr(COUNT_KEY)
    _, k = pipe.execute()
    value = noop(x)
    if k == _N:
        r.set(DONE_KEY, f"{float(r.get(FIRST_KEY))!r} {time.time()!r}")
    elif k % PROGRESS_EVERY == 0:
        r.rpush(PROGRESS_KEY, f"{k} {time.time()!r}")
    return value


def cpu(x: int) -> int:
    """A CPU-bound task: about 5 ms of pure Python (:data:`CPU_ITERATIONS`), then :func:`count_shared`."""
    s = 0
    for i in range(CPU_ITERATIONS):
        s += i * i
    return count_shared(x + (s & 0))
