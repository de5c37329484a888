"""The Python worker app of the interop tests: the same task names and behaviour as the Go
worker (interop/go/cmd/goworker/main.go). Run with ``machinery worker --app pyapp``; the broker,
backend and queue come from Go Machinery's environment variables (``BROKER``,
``RESULT_BACKEND``, ``DEFAULT_QUEUE``, ``AMQP_EXCHANGE``...)."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from machinery import Config, RetryTaskLater, Server, TaskContext

server = Server(Config.from_env())
side = redis.Redis.from_url(os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/0"))


@server.task("add")
def add(*numbers: int) -> int:
    """The sum."""
    return sum(numbers)


@server.task("multiply")
def multiply(*numbers: int) -> int:
    """The product."""
    product = 1
    for n in numbers:
        product *= n
    return product


@server.task("fail")
def fail() -> None:
    """Always fails with "boom" (Go: ``errors.New("boom")``)."""
    raise RuntimeError("boom")


@server.task("report_error")
def report_error(error: str) -> str:
    """An OnError callback."""
    return "handled: " + error


@server.task("flaky")
def flaky(ctx: TaskContext) -> str:
    """Fails while retries are left."""
    if ctx.retry_count > 0:
        raise RuntimeError(f"flaky: {ctx.retry_count} retries left")
    return "ok"


@server.task("retry_later")
def retry_later(key: str) -> int:
    """Asks to be retried in 1 s on its first run (counted in Redis), then returns the count."""
    n = int(side.incr(key))
    if n == 1:
        raise RetryTaskLater("not yet", 1.0)
    return n


@server.task("count")
def count(key: str, *numbers: int) -> int:
    """A chord callback that counts its runs in Redis (``key``) and records who ran it."""
    side.incr(key)
    side.rpush(key + ":who", "py")
    return sum(numbers)


@server.task("sleep")
def sleep(ms: int) -> int:
    """Sleeps ``ms`` milliseconds."""
    time.sleep(ms / 1000)
    return ms


@server.task("py_only")
def py_only() -> str:
    """A task the Go worker does not know (the Go worker's go_only is unknown here)."""
    return "py"


@server.task("echo")
def echo(ctx: TaskContext, *values: Any) -> tuple[Any, ...]:
    """Returns every argument (Python infers the results' Go types from the values)."""
    # the argument types as received, for the test to check Python decoded every Go type
    side.set("interop:echo_types:" + ctx.task_uuid, ",".join(a.type for a in ctx.signature.args), ex=600)
    return values
