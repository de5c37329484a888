"""The task app the conformance suite runs in worker subprocesses.

``python -m machinery.testing.app`` starts a worker configured from environment variables:

* ``MACHINERY_TEST_BROKER`` (required), ``MACHINERY_TEST_BACKEND``, ``MACHINERY_TEST_LOCK``: URLs;
* ``MACHINERY_TEST_QUEUE``: the queue to consume (the test's unique queue);
* ``MACHINERY_TEST_OPTIONS``: transport options as a JSON object of config sections;
* ``MACHINERY_TEST_CONCURRENCY`` (default 2), ``MACHINERY_TEST_EXPIRE`` (results_expire_in).

It registers the standard tasks of :data:`TASKS`. State that must survive a process (how often
a task ran, when) is kept in files whose path is a task argument, so a task killed in one
worker and redelivered to another still knows its history.

``python -m machinery.testing.app lock-contender ...`` is the other mode: a process that takes a
lock repeatedly, used by :class:`~machinery.testing.LockConformance` to test mutual exclusion
across processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from machinery.config import Config
from machinery.errors import ConfigError, RetryTaskLater
from machinery.schedule import TICK_HEADER
from machinery.server import Server
from machinery.task import TaskContext

__all__ = ["TASKS", "config_from_env", "config_to_env", "main", "register_tasks", "worker_server"]

log = logging.getLogger("machinery.testing.app")


def _append(path: str, text: str) -> int:
    """Append one line (a single atomic write) and return how many lines the file now has."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text + "\n")
    with open(path, encoding="utf-8") as fh:
        return sum(1 for _ in fh)


def add(*args: int) -> int:
    """Sum of the arguments (the seed examples' ``add``)."""
    return sum(args)


def multiply(*args: int) -> int:
    """Product of the arguments (the seed examples' ``multiply``)."""
    return math.prod(args)


def echo(*args: Any) -> tuple[Any, ...]:
    """Return every argument as a result, unchanged (one result per argument)."""
    return tuple(args)


def sleep(seconds: float) -> float:
    """Sleep, then return the seconds slept."""
    time.sleep(seconds)
    return seconds


def now() -> float:
    """The wall-clock time (``time.time()``) at which the task ran."""
    return time.time()


def raise_error(message: str) -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


def fail_times(path: str, failures: int) -> int:
    """Record a run in ``path``; raise for the first ``failures`` runs, then return the run number."""
    run = _append(path, repr(time.time()))
    if run <= failures:
        raise RuntimeError(f"planned failure {run} of {failures}")
    return run


def retry_later(path: str, times: int, seconds: float) -> int:
    """Record a run; raise :class:`RetryTaskLater` (``seconds``) for the first ``times`` runs."""
    run = _append(path, repr(time.time()))
    if run <= times:
        raise RetryTaskLater(f"not yet ({run} of {times})", seconds)
    return run


def record_error(error: str, *extra: Any) -> str:
    """An ``on_error`` callback: returns the error string it was given."""
    return error


def record_run(path: str, *args: Any) -> int:
    """Record a run (time and arguments) in ``path``; return how many runs it holds."""
    return _append(path, json.dumps([time.time(), *args], default=repr))


def record_tick(ctx: TaskContext, path: str) -> str:
    """A periodic task: record the tick it was sent for (the ``machinery_periodic_tick`` header)."""
    tick = str(ctx.headers.get(TICK_HEADER, ""))
    _append(path, tick)
    return tick


def block_first_run(path: str, seconds: float) -> int:
    """Record a run; the first run sleeps ``seconds`` (long enough to be killed), later ones return.

    :returns: the run number (2 when the task was delivered again after its worker died).
    """
    run = _append(path, repr(time.time()))
    if run == 1:
        time.sleep(seconds)
    return run


def fault_work(path: str, index: int, seconds: float) -> int:
    """The fault suite's task: append ``S <index> <pid> <time>`` to ``path``, sleep ``seconds``,
    append ``D <index> <pid> <time>``, return ``index``.

    Each line is one ``O_APPEND`` write, so lines of concurrent processes never interleave and a
    process killed mid-task leaves an ``S`` line without its ``D`` line: the file counts every
    execution independently of the broker and the backend.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"S {index} {os.getpid()} {time.time():.6f}\n".encode())
        if seconds > 0:
            time.sleep(seconds)
        os.write(fd, f"D {index} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)
    return index


async def async_wait(path: str, seconds: float) -> str:
    """An ``async def`` task: append ``start``, sleep ``seconds``, append ``done``; append
    ``cancelled`` instead when it is cancelled (revoked with ``terminate``)."""
    import asyncio

    _append(path, "start")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _append(path, "cancelled")
        raise
    _append(path, "done")
    return "done"


def busy_wait(path: str, seconds: float) -> str:
    """A thread task that keeps running Python code: append ``start``, spin for ``seconds``,
    append ``done``; append ``interrupted`` when a revoke with ``terminate`` stops it."""
    from machinery.errors import TaskRevoked

    _append(path, "start")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.005)
    except TaskRevoked:
        _append(path, "interrupted")
        raise
    _append(path, "done")
    return "done"


#: Starts per second of ``rate_limited`` (its ``rate_limit``).
RATE_LIMITED_PER_SECOND = 10


def rate_limited(path: str, index: int) -> int:
    """Registered with ``rate_limit="10/s"``: append ``<index> <time>`` to ``path``."""
    _append(path, f"{index} {time.time():.6f}")
    return index


#: The standard tasks every conformance worker registers, by name.
TASKS: Mapping[str, Callable[..., Any]] = {
    "add": add,
    "multiply": multiply,
    "echo": echo,
    "sleep": sleep,
    "now": now,
    "raise_error": raise_error,
    "fail_times": fail_times,
    "retry_later": retry_later,
    "record_error": record_error,
    "record_run": record_run,
    "record_tick": record_tick,
    "block_first_run": block_first_run,
    "fault_work": fault_work,
    "async_wait": async_wait,
    "busy_wait": busy_wait,
}


def register_tasks(server: Server) -> Server:
    """Register :data:`TASKS` on ``server`` (and ``rate_limited`` with its rate limit) and return it."""
    server.register_tasks(TASKS)
    server.register_task("rate_limited", rate_limited, rate_limit=f"{RATE_LIMITED_PER_SECOND}/s")
    return server


def config_to_env(config: Config, concurrency: int = 2) -> dict[str, str]:
    """The environment variables that make :func:`config_from_env` rebuild ``config``."""
    return {
        "MACHINERY_TEST_BROKER": config.broker_url,
        "MACHINERY_TEST_BACKEND": config.result_backend,
        "MACHINERY_TEST_LOCK": config.lock,
        "MACHINERY_TEST_QUEUE": config.default_queue,
        "MACHINERY_TEST_OPTIONS": json.dumps({k: dict(v) for k, v in config.transport_options.items()}),
        "MACHINERY_TEST_EXPIRE": str(config.results_expire_in),
        "MACHINERY_TEST_CONCURRENCY": str(concurrency),
    }


def config_from_env(env: Mapping[str, str] | None = None) -> Config:
    """The worker's :class:`Config` from the ``MACHINERY_TEST_*`` variables.

    :raises ConfigError: ``MACHINERY_TEST_BROKER`` is missing or ``MACHINERY_TEST_OPTIONS`` is
        not a JSON object.
    """
    env = os.environ if env is None else env
    broker = env.get("MACHINERY_TEST_BROKER", "")
    if not broker:
        raise ConfigError("MACHINERY_TEST_BROKER", "must be set to the broker URL under test")
    try:
        options = json.loads(env.get("MACHINERY_TEST_OPTIONS") or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError("MACHINERY_TEST_OPTIONS", f"not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ConfigError("MACHINERY_TEST_OPTIONS", "must be a JSON object of config sections")
    return Config(
        broker=broker,
        result_backend=env.get("MACHINERY_TEST_BACKEND", ""),
        lock=env.get("MACHINERY_TEST_LOCK", ""),
        default_queue=env.get("MACHINERY_TEST_QUEUE") or "machinery_tasks",
        results_expire_in=int(env.get("MACHINERY_TEST_EXPIRE") or "600"),
        transport_options=options,
    )


def worker_server() -> Server:
    """A :class:`Server` from the ``MACHINERY_TEST_*`` variables with :data:`TASKS` registered:
    the app of ``machinery worker --app machinery.testing.app:worker_server`` (the fault suite
    runs its workers through the real command line)."""
    return register_tasks(Server(config_from_env()))


def run_worker(env: Mapping[str, str] | None = None) -> None:
    """Run a worker with the standard tasks until SIGTERM/SIGINT."""
    env = os.environ if env is None else env
    server = register_tasks(Server(config_from_env(env)))
    concurrency = int(env.get("MACHINERY_TEST_CONCURRENCY") or "2")
    worker = server.new_worker(consumer_tag=f"mt-worker-{os.getpid()}", concurrency=concurrency)
    try:
        worker.launch()
    finally:
        server.close()


def contend_lock(args: argparse.Namespace) -> None:
    """Take ``args.key`` ``args.iterations`` times, logging ``enter``/``exit`` lines while held.

    Waits for ``<log>.go`` (after touching ``<log>.ready.<pid>``) so every contender starts at
    once. Each hold lasts ``args.hold`` seconds; the log shows any overlap between holders.
    """
    from machinery.plugins import get_plugin_host

    options = json.loads(args.options or "{}")
    config = Config(lock=args.url, transport_options=options)
    lock = get_plugin_host().lock_class(args.url)(args.url, config)
    log_path = Path(args.log)
    Path(f"{log_path}.ready.{os.getpid()}").touch()
    go = Path(f"{log_path}.go")
    deadline = time.monotonic() + 30
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("lock contender: never told to go")
        time.sleep(0.01)
    pid = os.getpid()
    ttl = timedelta(seconds=args.ttl)
    try:
        for _ in range(args.iterations):
            while not lock.acquire(args.key, ttl):
                time.sleep(0.002)
            _append(str(log_path), f"enter {pid}")
            time.sleep(args.hold)
            _append(str(log_path), f"exit {pid}")
            if not lock.release(args.key):
                _append(str(log_path), f"release-failed {pid}")
    finally:
        lock.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``worker`` (the default) or ``lock-contender``."""
    parser = argparse.ArgumentParser(prog="python -m machinery.testing.app")
    sub = parser.add_subparsers(dest="mode")
    sub.add_parser("worker", help="run a worker configured from MACHINERY_TEST_* (default)")
    lc = sub.add_parser("lock-contender", help="take a lock repeatedly, logging each hold")
    lc.add_argument("--url", required=True)
    lc.add_argument("--key", required=True)
    lc.add_argument("--log", required=True)
    lc.add_argument("--iterations", type=int, default=5)
    lc.add_argument("--hold", type=float, default=0.02)
    lc.add_argument("--ttl", type=float, default=10.0)
    lc.add_argument("--options", default="{}")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("MACHINERY_TEST_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    if args.mode == "lock-contender":
        contend_lock(args)
    else:
        run_worker()


if __name__ == "__main__":
    main()
