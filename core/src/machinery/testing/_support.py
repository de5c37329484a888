"""Helpers shared by the conformance classes and tests: a gated consumer, polling, worker
handles, a multi-process periodic-scheduler check."""

from __future__ import annotations

import itertools
import os
import queue as _queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from machinery.signature import decode_signature

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.interfaces import Broker, Delivery
    from machinery.server import Server
    from machinery.signature import Signature
    from machinery.worker import Worker

__all__ = [
    "Consumer",
    "SubprocessWorker",
    "ThreadWorker",
    "WorkerHandle",
    "check_periodic_ticks_once",
    "wait_until",
]

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; return it.

    :raises AssertionError: naming ``what`` when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Consumer:
    """Runs ``broker.consume`` in a thread, advancing it only when asked (like a worker slot).

    :param broker: the broker under test.
    :param queue: the queue to consume.
    :param prefetch: passed to ``consume``.
    :param on_delivery: if given, the consumer runs eagerly and calls it for every delivery
        (in the consumer thread) instead of handing deliveries out through :meth:`take`.
    """

    def __init__(
        self,
        broker: Broker,
        queue: str,
        *,
        prefetch: int = 1,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.prefetch = prefetch
        self.on_delivery = on_delivery
        self.stop_event = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self._slots = threading.Semaphore(0)
        self._out: _queue.SimpleQueue[Delivery] = _queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"mt-consumer-{queue}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            it = self.broker.consume(self.queue, prefetch=self.prefetch, stop=self.stop_event)
            try:
                while not self.stop_event.is_set():
                    if self.on_delivery is None:
                        while not self._slots.acquire(timeout=0.05):
                            if self.stop_event.is_set():
                                return
                    try:
                        delivery = next(it)
                    except StopIteration:
                        return
                    if self.on_delivery is not None:
                        self.on_delivery(delivery)
                    else:
                        self._out.put(delivery)
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()/take()
            self.error = exc
        finally:
            self.finished.set()

    def take(self, timeout: float) -> Delivery | None:
        """Let the consumer take one message; the delivery, or None after ``timeout`` seconds."""
        if self.error is not None:
            raise AssertionError(f"consume() raised {self.error!r}") from self.error
        self._slots.release()
        try:
            return self._out.get(timeout=timeout)
        except _queue.Empty:
            if self.error is not None:
                raise AssertionError(f"consume() raised {self.error!r}") from self.error
            return None

    def take_due(
        self, timeout: float, *, early: list[tuple[Signature, float]] | None = None
    ) -> tuple[Delivery, Signature, float] | None:
        """Take the next delivery that is due, treating early ones as the worker does.

        A delivery whose ETA is still in the future is given back with ``nack(delay=...)`` and
        recorded in ``early`` as ``(signature, seconds early)``.

        :returns: ``(delivery, signature, time.time() at delivery)`` or None on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            d = self.take(left)
            if d is None:
                return None
            at = time.time()
            sig = decode_signature(d.body)
            ahead = sig.eta.timestamp() - at if sig.eta is not None else 0.0
            if ahead > 0.002:
                if early is not None:
                    early.append((sig, ahead))
                self.broker.nack(d, requeue=True, delay=ahead)
                continue
            return d, sig, at

    def stop(self, timeout: float = 10.0) -> float:
        """Set the stop event; return how long ``consume`` took to return.

        Deliveries taken but never handed out are given back with ``nack(requeue=True)``.

        :raises AssertionError: ``consume`` raised, or did not return within ``timeout``.
        """
        t0 = time.monotonic()
        self.stop_event.set()
        self._slots.release()
        returned = self.finished.wait(timeout)
        elapsed = time.monotonic() - t0
        while True:
            try:
                leftover = self._out.get_nowait()
            except _queue.Empty:
                break
            self.broker.nack(leftover, requeue=True)
        if not returned:
            raise AssertionError(f"consume() did not return within {timeout:g}s of stop being set")
        if self.error is not None:
            raise AssertionError(f"consume() raised {self.error!r}") from self.error
        return elapsed


class WorkerHandle(ABC):
    """A running worker (subprocess or thread) started by the ``machinery_worker`` fixture."""

    name = "worker"

    @abstractmethod
    def stop(self) -> None:
        """Warm shutdown: stop consuming, let in-flight tasks finish."""

    def kill(self) -> None:
        """Die at once without acknowledging anything (SIGKILL)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be killed; use a subprocess worker")

    def output(self) -> str:
        """What the worker logged (for failure reports)."""
        return ""


class SubprocessWorker(WorkerHandle):
    """``python -m machinery.testing.app`` with the test's configuration in its environment.

    :param config: the configuration (URLs, queue, transport options).
    :param log_path: file receiving the worker's stdout and stderr.
    :param concurrency: task threads.
    """

    def __init__(self, config: Config, log_path: Path, concurrency: int = 2) -> None:
        from machinery.testing.app import config_to_env

        self.name = f"subprocess worker ({log_path.name})"
        self.log_path = log_path
        env = {**os.environ, **config_to_env(config, concurrency), "PYTHONUNBUFFERED": "1"}
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "machinery.testing.app"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the worker logged that it is consuming (its imports can take seconds on a
        loaded machine: tests with tight timing must not start the clock before this).

        :raises RuntimeError: the process exited or did not get ready in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready: queue=" in self.output():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} not ready after {timeout:g}s:\n{self.output()[-3000:]}")

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it has not exited after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL: in-flight messages stay unacknowledged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def output(self) -> str:
        """The worker's log."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


class ThreadWorker(WorkerHandle):
    """A worker in a background thread of the test process (for in-process transports).

    :param config: the configuration.
    :param concurrency: task threads.
    :param tasks: extra tasks to register besides the standard ones.
    :param standard_tasks: register :data:`machinery.testing.app.TASKS`.
    """

    def __init__(
        self,
        config: Config,
        concurrency: int = 2,
        tasks: Mapping[str, Callable[..., Any]] | None = None,
        standard_tasks: bool = True,
    ) -> None:
        from machinery.server import Server
        from machinery.testing.app import register_tasks

        self.name = "thread worker"
        self.server: Server = Server(config.replace(no_unix_signals=True))
        if standard_tasks:
            register_tasks(self.server)
        if tasks:
            self.server.register_tasks(tasks)
        self.worker: Worker = self.server.new_worker(consumer_tag="mt-thread-worker", concurrency=concurrency)
        self.worker.launch_in_background()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop consuming and wait for in-flight tasks."""
        self.worker.quit(wait=True, timeout=timeout)
        self.server.close()


_SCHEDULER_CHILD = textwrap.dedent(
    """
    import logging, os, signal, sys, threading
    from machinery import Config, Server, Signature
    from machinery.schedule import Scheduler

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    env = os.environ
    server = Server(Config(broker=env["P_BROKER"], result_backend=env["P_BACKEND"], lock=env["P_LOCK"],
                           default_queue=env["P_QUEUE"]))
    server.register_periodic_task("@every 1s", env["P_NAME"], Signature("tick"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _ = server.lock
    print("ready", flush=True)
    Scheduler(server).run_forever(stop)
    server.close()
    """
)
_SENT = re.compile(r"machinery\.schedule: periodic '[^']+': tick (\S+) sent task (task_\S+)")


def check_periodic_ticks_once(
    workdir: Path,
    *,
    broker: str,
    backend: str,
    lock: str,
    seconds: float = 10.0,
    processes: int = 3,
) -> None:
    """Run ``processes`` scheduler processes against one lock; assert each tick fired exactly once.

    Each process runs :class:`~machinery.schedule.Scheduler` on its own ``Server`` (so its own
    lock owner) for an ``@every 1s`` entry, all on a fresh queue, for ``seconds``. Then every
    message of the queue is consumed, and the check is, by the tick header each one carries,
    that no tick was delivered twice, no interior tick is missing, at least ``seconds - 2``
    ticks were delivered, and the schedulers' "sent" log lines name exactly the delivered
    (tick, task UUID) pairs.

    :param workdir: a scratch directory (the child script is written there).
    :param broker: broker URL of the schedulers and of the draining consumer.
    :param backend: result backend URL.
    :param lock: lock URL: the transport under test.
    :param seconds: how long the schedulers run.
    :param processes: how many scheduler processes.
    :raises AssertionError: a process failed, or a tick was duplicated or missed.
    """
    queue = f"periodic_{uuid.uuid4().hex[:8]}"
    logs = _run_schedulers(workdir, broker, backend, lock, queue, seconds, processes)
    delivered = _drain_ticks(broker, backend, queue)
    counts = Counter(tick for tick, _ in delivered)
    dupes = {t: c for t, c in counts.items() if c != 1}
    assert not dupes, f"ticks delivered more than once: {dupes}"
    ticks = sorted(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in counts)
    gaps = [(a, b) for a, b in itertools.pairwise(ticks) if b - a != timedelta(seconds=1)]
    warnings = [
        line
        for log in logs
        for line in log.splitlines()
        if line.startswith("machinery.schedule") and not _SENT.match(line)
    ]
    assert not gaps, f"missing interior ticks between {gaps}; scheduler logs: {warnings}"
    assert len(ticks) >= seconds - 2, f"only {len(ticks)} ticks in {seconds:g}s"
    # what the schedulers logged as sent is exactly what was delivered, UUIDs included
    logged = [(m.group(1), m.group(2)) for log in logs for m in _SENT.finditer(log)]
    assert sorted(logged) == sorted(delivered)


def _run_schedulers(
    workdir: Path, broker: str, backend: str, lock: str, queue: str, seconds: float, n: int
) -> list[str]:
    """Run ``n`` scheduler processes for ``seconds``; return their stderr (logs)."""
    script = workdir / "periodic_child.py"
    script.write_text(_SCHEDULER_CHILD)
    env = {
        **os.environ,
        "P_BROKER": broker,
        "P_BACKEND": backend,
        "P_LOCK": lock,
        "P_QUEUE": queue,
        "P_NAME": f"every-second-{uuid.uuid4().hex[:8]}",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    logs: list[str] = []
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")
        time.sleep(seconds)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            _, err = p.communicate(timeout=15)
            logs.append(err)
            assert p.returncode == 0, err
    return logs


def _drain_ticks(broker: str, backend: str, queue: str, idle: float = 2.0) -> list[tuple[str, str]]:
    """Consume (and ack) every message of ``queue`` until it is idle: (tick header, task UUID) pairs."""
    from machinery.config import Config
    from machinery.schedule import TICK_HEADER
    from machinery.server import Server

    server = Server(Config(broker=broker, result_backend=backend, default_queue=queue))
    stop = threading.Event()
    last = [time.monotonic()]

    def watchdog() -> None:
        while not stop.is_set():
            if time.monotonic() - last[0] > idle:
                stop.set()
            time.sleep(0.1)

    threading.Thread(target=watchdog, daemon=True).start()
    out: list[tuple[str, str]] = []
    try:
        for d in server.broker.consume(queue, prefetch=16, stop=stop):
            sig = decode_signature(d.body)
            out.append((str(sig.headers[TICK_HEADER]), sig.uuid))
            server.broker.ack(d)
            last[0] = time.monotonic()
    finally:
        stop.set()
        server.close()
    return out
