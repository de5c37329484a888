"""Dramatiq on Redis (broker, and the Results middleware's Redis backend when results are on);
on RabbitMQ (``RabbitmqBroker``, results still in Redis) when ``BENCH_BROKER`` is an ``amqp://`` URL.

Worker: ``dramatiq bench_dramatiq --processes 1 --threads 8`` (``--threads`` from
``BENCH_CONCURRENCY``). ``RabbitmqBroker`` publishes without publisher confirms unless
``confirm_delivery=True`` (``BENCH_CONFIRM=1``).
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

_broker = os.environ.get("BENCH_BROKER") or _url
_confirm = os.environ.get("BENCH_CONFIRM") == "1"
_concurrency = os.environ.get("BENCH_CONCURRENCY", "") or "8"
#: The drained task (``count``, the no-op, or ``sleep_count``, the I/O-bound one).
TASK = os.environ.get("BENCH_TASK", "") or "count"

if _broker.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=_broker, confirm_delivery=_confirm)
else:
    broker = RedisBroker(url=_url)
if _results:
    broker.add_middleware(Results(backend=RedisBackend(url=_url)))
dramatiq.set_broker(broker)

_opts = {"store_results": True} if _results else {}
count = dramatiq.actor(probe.count, actor_name="count", queue_name=_queue, max_retries=0, **_opts)
echo = dramatiq.actor(probe.noop, actor_name="echo", queue_name=_queue, max_retries=0, **_opts)
eta = dramatiq.actor(probe.eta, actor_name="eta", queue_name=_queue, max_retries=0, **_opts)
sleep_count = dramatiq.actor(probe.sleep_count, actor_name="sleep_count", queue_name=_queue, max_retries=0, **_opts)
_drained = {"count": count, "sleep_count": sleep_count}[TASK]


def worker_cmd(python: str, results: bool) -> list[str]:
    return [python, "-m", "dramatiq", "bench_dramatiq", "--processes", "1", "--threads", _concurrency, "--queues", _queue]


WORKER_NOTE = f"`dramatiq --processes 1 --threads {_concurrency}` (Results middleware with its Redis backend for results on)"
if _broker.startswith("amqp"):
    WORKER_NOTE += "; `RabbitmqBroker`, " + ("publisher confirms on (`confirm_delivery=True`)" if _confirm else "no publisher confirms (its default)")


class Client:
    def __init__(self, results: bool) -> None:
        self.broker = broker

    def enqueue(self, i: int) -> None:
        _drained.send(i)

    def roundtrip(self, i: int) -> int:
        return int(echo.send(i).get_result(block=True, timeout=30_000))

    def eta(self, i: int, due: float) -> None:
        delay_ms = max(0, round((due - time.time()) * 1000))
        eta.send_with_options(args=(i, due), delay=delay_ms)

    def close(self) -> None:
        self.broker.close()
