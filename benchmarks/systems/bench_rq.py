"""RQ: jobs are Redis hashes, results a Redis stream per job.

Worker: ``rq worker --worker-class rq.worker.SimpleWorker --with-scheduler``: one process that
runs jobs in-process, one at a time (RQ has no threads; its default ``Worker`` forks a process
per job, and ``rq worker-pool`` runs several processes). "Results off" enqueues with
``result_ttl=0``.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import probe
from redis import Redis
from rq import Queue

NAME = "rq"
DIST = "rq"
IMPORT = "rq"
ASYNC = False

_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_results = os.environ.get("BENCH_RESULTS", "1") == "1"
_queue = os.environ.get("BENCH_QUEUE", "default")


def worker_cmd(python: str, results: bool) -> list[str]:
    return [
        python, "-m", "rq.cli", "worker", "--url", _url, "--worker-class", "rq.worker.SimpleWorker",
        "--with-scheduler", "--logging_level", "WARNING", _queue,
    ]


WORKER_NOTE = "`rq worker --worker-class rq.worker.SimpleWorker --with-scheduler` (one process, one job at a time: RQ has no threads)"


class Client:
    def __init__(self, results: bool) -> None:
        self.conn = Redis.from_url(_url)
        self.queue = Queue(_queue, connection=self.conn)
        self.opts = {} if results else {"result_ttl": 0}

    def enqueue(self, i: int) -> None:
        self.queue.enqueue(probe.count, i, **self.opts)

    def prefill(self, n: int) -> None:
        """The drain's backlog: the same jobs as :meth:`enqueue`, with ``Queue.enqueue_many``."""
        for start in range(0, n, 1000):
            jobs = [Queue.prepare_data(probe.count, (i,), **self.opts) for i in range(start, min(n, start + 1000))]
            self.queue.enqueue_many(jobs)

    def roundtrip(self, i: int) -> int:
        job = self.queue.enqueue(probe.noop, i)
        result = job.latest_result(timeout=30)
        if result is None:
            raise TimeoutError(f"no result for job {job.id}")
        return int(result.return_value)

    def eta(self, i: int, due: float) -> None:
        self.queue.enqueue_at(datetime.fromtimestamp(due, tz=timezone.utc), probe.eta, i, due)

    def close(self) -> None:
        self.conn.close()
