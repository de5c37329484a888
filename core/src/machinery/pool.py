"""The processes pool (``machinery worker --pool processes -c N``).

The worker process is the *supervisor*: it keeps the broker connection, the consumer, the
result backend and every acknowledgement, exactly as with the threads pool. Each of its N task
threads hands the task's function call to one of N child processes and waits for the answer;
everything else (states, callbacks, chords, retries, the acknowledgement after the final state
is stored) stays in the supervisor. ``async def`` tasks keep running on the supervisor's event
loop.

Children are started with ``spawn``, not ``fork``: the supervisor runs threads (consumer, task
threads, the backend's writer, heartbeats) and holds open sockets and SQLite connections, and a
forked child would inherit locks held by other threads at the fork and share those
connections. A spawned child is a fresh interpreter that imports the app by the import path the
worker was given (``--app module:attr``), so children cost an interpreter start-up each, paid
at start and when a child is replaced.

- **Time limits**: at the soft limit the supervisor sends SIGUSR1 to the child, whose handler
  raises :class:`~machinery.errors.SoftTimeLimitExceeded` in the task (a blocking ``sleep`` or
  read is interrupted); at the hard limit it sends SIGKILL, starts a replacement and the task
  is FAILURE ``"time limit exceeded (Ns)"`` (or RETRY with retries left).
- **Recycling**: after a task, a child that has run ``max_tasks_per_child`` tasks or whose
  resident memory passed ``max_memory_per_child`` KiB is stopped and replaced; never mid-task.
- **Crashes**: a child that dies mid-task (``os._exit``, a segfault, the OOM killer, SIGKILL)
  is replaced; the task is delivered again, with the death counted in the Python-only header
  ``machinery_crashes``, until ``max_crashes`` deaths, then stored as FAILURE. Each death is
  logged with how the child died.
"""

from __future__ import annotations

import logging
import os
import queue as _queue
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from machinery.errors import TimeLimitExceeded, WorkerLostError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from machinery.signature import Signature
    from machinery.task import Task
    from machinery.worker import Worker

__all__ = ["ProcessPool", "child_died"]

log = logging.getLogger("machinery.worker")

#: Seconds a new child may take to import the app and say it is ready.
START_TIMEOUT = 120.0
#: Seconds a child asked to stop may take before it is killed.
STOP_TIMEOUT = 10.0


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a child process (the ``__cause__`` of the
    exception the supervisor re-raises, so the worker's log shows where the task failed)."""

    def __init__(self, tb: str) -> None:
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


class ChildTaskError(Exception):
    """A task's exception that could not be sent back from the child (it does not pickle):
    same message, its class named in :attr:`type_name`."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        super().__init__(message)

    def __reduce__(self) -> tuple[type[ChildTaskError], tuple[str, str]]:
        return (type(self), (self.type_name, str(self)))


#: The children's program: :func:`machinery.pool_child.child_main`, named and not imported here.
#: It loads the app (``cli_common.load_app``) and builds a Server, so it sits above the worker
#: and this module; the supervisor never runs it, only a spawned child does.
CHILD_MAIN = "machinery.pool_child:child_main"


class _ChildMain:
    """The spawn target: pickles as a call to :func:`pkgutil.resolve_name` on
    :data:`CHILD_MAIN`, so the child imports that module as its program and this one need not."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import pkgutil

        return (pkgutil.resolve_name, (CHILD_MAIN,))

    def __call__(self, *args: Any) -> None:
        raise RuntimeError(f"{CHILD_MAIN} runs in a spawned child, which unpickles it; not in the supervisor")


class _Child:
    __slots__ = ("conn", "pid", "proc", "ready", "tasks")

    def __init__(self, proc: BaseProcess, conn: Connection) -> None:
        self.proc = proc
        self.conn = conn
        self.pid = proc.pid or 0
        self.ready = False
        self.tasks = 0


def _how_it_died(proc: BaseProcess) -> str:
    proc.join(5)
    code = proc.exitcode
    if code is None:
        return "no answer"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcessPool:
    """N spawned child processes running tasks for a :class:`~machinery.worker.Worker`.

    :param worker: the supervising worker (its ``app``, limits and recycling settings).
    :param n: the number of children (the worker's concurrency).
    :raises ValueError: the worker has no app import path.
    :raises RuntimeError: a child could not import the app.
    """

    def __init__(self, worker: Worker, n: int) -> None:
        if not worker.app:
            raise ValueError(
                "the processes pool needs the app's import path, which its children import: "
                "worker.app = 'module:server' (the CLI's --app)"
            )
        import multiprocessing

        self.worker = worker
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: _queue.SimpleQueue[_Child] = _queue.SimpleQueue()
        self._children: set[_Child] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.started = 0  # children started so far (tests, logs)
        children = [self._start() for _ in range(n)]
        for child in children:
            self._wait_ready(child)
            self._idle.put(child)
        log.info("processes pool: %d children started (spawn), running tasks of %s", n, worker.app)

    # -- children ----------------------------------------------------------------------------

    def _start(self) -> _Child:
        parent, child_end = self._ctx.Pipe()
        w = self.worker
        measure = w.max_memory_per_child > 0
        cpus = w._pinned.original if w._pinned is not None else None
        proc = self._ctx.Process(
            target=_ChildMain(),
            # a worker kept on one CPU (--cpu-affinity) gives its children the CPUs it had before
            args=(w.app, w.server.config, child_end, w.consumer_tag, logging.getLogger().level, measure, cpus),
            name=f"{w.consumer_tag}-child",
            daemon=True,
        )
        proc.start()
        child_end.close()
        child = _Child(proc, parent)
        with self._lock:
            self._children.add(child)
            self.started += 1
        return child

    def _wait_ready(self, child: _Child) -> None:
        if child.ready:
            return
        try:
            if not child.conn.poll(START_TIMEOUT):
                raise RuntimeError(f"child process {child.pid} did not start within {START_TIMEOUT:g}s")
            msg = child.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"child process {child.pid} died while starting ({_how_it_died(child.proc)})") from None
        if msg[0] != "ready":
            self._discard(child)
            raise RuntimeError(f"child process {child.pid} could not start: {msg[1]}")
        child.ready = True

    def _discard(self, child: _Child, kill: bool = True) -> None:
        with self._lock:
            self._children.discard(child)
        if kill and child.proc.is_alive():
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        child.proc.join(STOP_TIMEOUT)
        child.conn.close()

    def _retire(self, child: _Child, why: str) -> None:
        log.info("processes pool: replacing child %d (%s)", child.pid, why)
        try:
            child.conn.send(None)
        except OSError:
            pass
        child.proc.join(STOP_TIMEOUT)
        self._discard(child)

    def _replacement(self) -> _Child | None:
        if self._closed:
            return None
        return self._start()

    # -- running -----------------------------------------------------------------------------

    def run(self, sig: Signature, task: Task, values: list[Any], soft: float | None, hard: float | None) -> Any:
        """Run ``task`` with ``values`` in a child and return its result list (TaskResults).

        :raises TimeLimitExceeded: the hard limit passed (the child was killed and replaced).
        :raises WorkerLostError: the child died while running the task (it was replaced).
        :raises Exception: what the task raised (re-raised here, the child's traceback as its cause).
        """
        child = self._idle.get()
        put_back: _Child | None = child
        try:
            try:
                self._wait_ready(child)
            except RuntimeError:  # the task fails with the reason; the next one gets a new child
                self._discard(child)
                put_back = self._replacement()
                raise
            body = None
            if task.takes_context:
                from machinery.signature import encode_signature

                body = encode_signature(sig)
            child.conn.send((task.name, values, body, soft or 0.0))
            child.tasks += 1
            reply = self._wait(child, sig, soft, hard)
            if reply is None:  # killed at the hard limit
                put_back = self._replacement()
                raise TimeLimitExceeded(hard or 0.0)
            kind, payload, rss = reply
            w = self.worker
            if w.max_tasks_per_child and child.tasks >= w.max_tasks_per_child:
                self._retire(child, f"{child.tasks} tasks, max_tasks_per_child {w.max_tasks_per_child}")
                put_back = self._replacement()
            elif w.max_memory_per_child and rss > w.max_memory_per_child:
                self._retire(child, f"resident memory {rss} KiB > max_memory_per_child {w.max_memory_per_child} KiB")
                put_back = self._replacement()
            if kind == "ok":
                return payload
            exc, tb = payload
            if tb:
                exc.__cause__ = RemoteTraceback(tb)
            raise exc
        except WorkerLostError:
            put_back = self._replacement()
            raise
        finally:
            if put_back is not None:
                self._idle.put(put_back)

    def _wait(self, child: _Child, sig: Signature, soft: float | None, hard: float | None) -> Any:
        t0 = time.monotonic()
        soft_at = t0 + soft if soft else None
        hard_at = t0 + hard if hard else None
        conn = child.conn
        while True:
            now = time.monotonic()
            until = min((t for t in (soft_at, hard_at) if t is not None), default=None)
            try:
                if until is None:  # no limit: one blocking read, no poll
                    return conn.recv()
                if conn.poll(max(0.0, until - now)):
                    return conn.recv()
            except (EOFError, OSError):
                self._discard(child, kill=False)
                raise WorkerLostError(_how_it_died(child.proc)) from None
            except Exception as exc:  # noqa: BLE001 - an answer that does not unpickle here
                return ("err", (ChildTaskError(type(exc).__name__, f"cannot read the child's answer: {exc}"), ""), 0)
            now = time.monotonic()
            if hard_at is not None and now >= hard_at:
                log.error(
                    "task %s (%s) exceeded its hard time limit of %gs: killing child process %d and starting another",
                    sig.name,
                    sig.uuid,
                    hard,
                    child.pid,
                )
                self._discard(child)
                return None
            if soft_at is not None and now >= soft_at:
                soft_at = None
                log.warning("task %s (%s) exceeded its soft time limit of %gs", sig.name, sig.uuid, soft)
                try:
                    os.kill(child.pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass

    # -- shutdown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every child (after the task threads have finished: warm shutdown)."""
        self._closed = True
        with self._lock:
            children = list(self._children)
        for child in children:
            try:
                child.conn.send(None)
            except OSError:
                pass
        for child in children:
            child.proc.join(STOP_TIMEOUT)
            self._discard(child)

    def kill(self) -> None:
        """SIGKILL every child at once (cold shutdown)."""
        self._closed = True
        with self._lock:
            children = list(self._children)
        for child in children:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass

    def pids(self) -> list[int]:
        """The process ids of the live children."""
        with self._lock:
            return sorted(c.pid for c in self._children)


def child_died(worker: Worker, sig: Signature, exc: WorkerLostError) -> bool:
    """A processes-pool child died running the task: deliver it again (a copy with the
    death counted in a Python-only header) until ``max_crashes`` deaths, then FAILURE."""
    from machinery.timelimit import CRASHES_HEADER

    crashes = sig.headers.get(CRASHES_HEADER, 0) if sig.headers else 0
    crashes = (crashes if isinstance(crashes, int) and not isinstance(crashes, bool) else 0) + 1
    if crashes < worker.max_crashes:
        log.error(
            "task %s (%s): %s; delivering it again (death %d of at most %d)",
            sig.name,
            sig.uuid,
            exc,
            crashes,
            worker.max_crashes,
        )
        sig.headers = {**sig.headers, CRASHES_HEADER: crashes}
        worker.server.producer.republish(sig)
        return False
    log.error(
        "task %s (%s): %s; %d deaths, storing FAILURE (max_crashes %d)",
        sig.name,
        sig.uuid,
        exc,
        crashes,
        worker.max_crashes,
    )
    return worker._failed(sig, WorkerLostError(f"{exc.reason}; {crashes} times"), "")
