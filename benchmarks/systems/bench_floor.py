"""The floor: raw redis-py ``LPUSH`` + ``BRPOP`` on the same server, no task queue at all.

Producer: one ``LPUSH`` per message. Worker (``python bench_floor.py``): one connection, one
``BRPOP`` per message; for round trips it answers each message with an ``LPUSH`` to a reply list.
"""

from __future__ import annotations

import os
import sys

import probe
import redis

NAME = "floor"
DIST = "redis"
IMPORT = "redis"
ASYNC = False
ETA_UNSUPPORTED = "not a task queue"

_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_queue = os.environ.get("BENCH_QUEUE", "floor")
_reply = _queue + ":reply"


def worker_cmd(python: str, results: bool) -> list[str]:
    return [python, os.path.abspath(__file__), "1" if results else "0"]


WORKER_NOTE = "raw redis-py: `LPUSH` per message, one consumer doing `BRPOP` per message (+ `LPUSH` reply in round trips)"


class Client:
    def __init__(self, results: bool) -> None:
        self.conn = redis.Redis.from_url(_url)

    def enqueue(self, i: int) -> None:
        self.conn.lpush(_queue, b"c%d" % i)

    def roundtrip(self, i: int) -> int:
        self.conn.lpush(_queue, b"e%d" % i)
        _, value = self.conn.brpop([_reply], timeout=30)
        return int(value)

    def close(self) -> None:
        self.conn.close()


def _work() -> None:
    conn = redis.Redis.from_url(_url)
    while True:
        item = conn.brpop([_queue], timeout=1)
        if item is None:
            continue
        body = item[1]
        x = int(body[1:])
        if body[:1] == b"c":
            probe.count(x)
        else:
            conn.lpush(_reply, b"%d" % probe.noop(x))


if __name__ == "__main__":
    try:
        _work()
    except KeyboardInterrupt:
        sys.exit(0)
