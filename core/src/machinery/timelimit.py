"""Time limits: which limits apply to a task, and the watchdog that enforces them on the
threads pool and on ``async def`` tasks (the processes pool enforces its own, in
:mod:`machinery.pool`).

Limits come from, in order: the signature's Python-only headers (:data:`TIME_LIMIT_HEADER`,
:data:`SOFT_TIME_LIMIT_HEADER`, set with :func:`with_time_limit`), the task's registration
(``@server.task("x", time_limit=30, soft_time_limit=25)``), the worker's defaults
(``--time-limit``, ``--soft-time-limit``, ``Config.time_limit``...). Go workers ignore the headers.

Soft limit: :class:`~machinery.errors.SoftTimeLimitExceeded` is raised inside the task. In a
task thread it is an asynchronous exception (``PyThreadState_SetAsyncExc``), raised at the
thread's next Python instruction: a thread blocked in one long C call (``time.sleep(60)``, a
socket read without timeout) sees it only when that call returns. An ``async def`` task sees it
at the ``await`` it is suspended on (or, awaiting another task, as a cancellation turned into
the exception).

Hard limit: a thread cannot be killed. The watchdog stores FAILURE ``"time limit exceeded
(Ns)"`` (or RETRY when the task has retries left), acknowledges the message, *abandons* the
thread (it runs on, detached; whatever it returns is discarded) and starts a replacement, so
the worker keeps its concurrency. Past ``max_abandoned_threads`` abandoned threads still
running, the worker stops taking messages, finishes its in-flight tasks and exits with status
:data:`EXIT_RESTART` (75) so that its supervisor (systemd, Kubernetes, supervisord) starts a
fresh process. An ``async def`` task is cancelled at its hard limit.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from machinery.errors import SoftTimeLimitExceeded, TimeLimitExceeded

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures

    from machinery.signature import Signature
    from machinery.task import Task
    from machinery.worker import Worker

__all__ = [
    "CRASHES_HEADER",
    "EXIT_RESTART",
    "SOFT_TIME_LIMIT_HEADER",
    "TIME_LIMIT_HEADER",
    "limits_for",
    "with_time_limit",
]

log = logging.getLogger("machinery.worker")

#: Header (Python only, Go ignores it) with a hard time limit in seconds for one signature.
TIME_LIMIT_HEADER = "machinery_time_limit"
#: Header (Python only) with a soft time limit in seconds for one signature.
SOFT_TIME_LIMIT_HEADER = "machinery_soft_time_limit"
#: Header (Python only) counting the deaths of child processes that ran this task (processes pool).
CRASHES_HEADER = "machinery_crashes"
#: Exit status of a worker that stopped so that its supervisor starts a fresh process.
EXIT_RESTART = 75


def with_time_limit(sig: Signature, time_limit: float | None = None, soft_time_limit: float | None = None) -> Signature:
    """Set per-signature time limits (in the Python-only headers; Go workers ignore them).

    :param sig: the signature, changed in place and returned.
    :param time_limit: hard limit in seconds (None: leave as is).
    :param soft_time_limit: soft limit in seconds (None: leave as is).
    :raises ValueError: a limit that is not a positive number.
    """
    headers = dict(sig.headers)
    for key, value in ((TIME_LIMIT_HEADER, time_limit), (SOFT_TIME_LIMIT_HEADER, soft_time_limit)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{key} must be a positive number of seconds, got {value!r}")
        headers[key] = value
    sig.headers = headers
    return sig


def _header_limit(sig: Signature, key: str) -> float | None:
    headers = sig.headers
    if not headers or key not in headers:
        return None
    value = headers[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        log.warning("task %s (%s): ignoring header %s=%r (not a positive number)", sig.name, sig.uuid, key, value)
        return None
    return float(value)


def limits_for(
    sig: Signature, task: Task, default_hard: float | None, default_soft: float | None
) -> tuple[float | None, float | None]:
    """``(soft, hard)`` limits in seconds for one run (None: no limit): the signature's headers,
    else the task's registration, else the worker's defaults. A soft limit not below the hard
    one is dropped (the hard limit comes first)."""
    hard = _header_limit(sig, TIME_LIMIT_HEADER)
    if hard is None:
        hard = task.time_limit if task.time_limit is not None else default_hard
    soft = _header_limit(sig, SOFT_TIME_LIMIT_HEADER)
    if soft is None:
        soft = task.soft_time_limit if task.soft_time_limit is not None else default_soft
    if soft is not None and hard is not None and soft >= hard:
        soft = None
    return soft, hard


def raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> bool:
    """Schedule ``exc`` to be raised in the thread ``thread_id`` (None clears a pending one)."""
    import ctypes  # here, not at import: only limited tasks need it

    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)
    return bool(n == 1)


class Abandoned(BaseException):
    """Raised in a task thread whose run the watchdog settled at the hard limit: the thread must
    drop what it computed and exit (a BaseException, so no task-level handler takes it)."""


class Run:
    """One limited task run: who finishes it first, the task's thread or the watchdog."""

    __slots__ = ("async_future", "hard", "limit_soft", "lock", "on_hard", "soft", "state", "thread", "thread_id")

    def __init__(self, soft: float | None, hard: float | None, on_hard: Callable[[Run], None] | None) -> None:
        self.limit_soft = soft
        self.soft = soft
        self.hard = hard
        self.on_hard = on_hard
        self.lock = threading.Lock()
        self.state = "running"  # -> "done" (the thread finished it) or "abandoned" (the watchdog did)
        self.thread = threading.current_thread()
        self.thread_id = threading.get_ident()
        #: For ``async def`` tasks: the future of the coroutine on the worker's loop.
        self.async_future: concurrent.futures.Future[Any] | None = None

    def finish(self) -> bool:
        """Called by the task's thread when the task returned or raised: True if the result is
        its to store (also when called again), False if the watchdog abandoned the run."""
        with self.lock:
            if self.state == "running":
                self.state = "done"
                if self.limit_soft is not None and self.async_future is None:
                    raise_in_thread(self.thread_id, None)  # a soft limit that fired too late
            return self.state == "done"

    def call(self, fn: Callable[..., Any], values: list[Any]) -> Any:
        """Run ``fn(*values)`` as this run. :raises Abandoned: the watchdog settled it."""
        try:
            try:
                return fn(*values)
            finally:
                if not self.finish():
                    raise Abandoned("async" if self.async_future is not None else "thread")
        except SoftTimeLimitExceeded:
            # The soft limit's exception may land in the few instructions between the task's
            # return and ``finish`` (skipping it). It is raised once per run, so this handler
            # cannot be interrupted by it: finish here, so the hard limit cannot fire as well.
            if not self.finish():
                raise Abandoned("async" if self.async_future is not None else "thread") from None
            raise


class Watchdog:
    """One thread firing the soft and hard limits of the runs of one worker."""

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[float, int, str, Run]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"{name}-timelimits", daemon=True)
        self._thread.start()

    def watch(self, run: Run) -> None:
        """Fire ``run``'s limits from now on."""
        now = time.monotonic()
        with self._cond:
            if run.soft is not None:
                heapq.heappush(self._heap, (now + run.soft, next(self._seq), "soft", run))
            if run.hard is not None:
                heapq.heappush(self._heap, (now + run.hard, next(self._seq), "hard", run))
            self._cond.notify()

    def stop(self) -> None:
        """Stop the watchdog thread."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    while self._heap and self._heap[0][3].state != "running":
                        heapq.heappop(self._heap)  # finished runs are dropped lazily
                    if self._heap and self._heap[0][0] <= now:
                        _, _, kind, run = heapq.heappop(self._heap)
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                else:
                    return
            try:
                if kind == "soft":
                    self._soft(run)
                else:
                    self._hard(run)
            except Exception:
                log.exception("time limit watchdog: error while enforcing a limit")

    def _soft(self, run: Run) -> None:
        with run.lock:
            if run.state != "running":
                return
            fut = run.async_future
            if fut is None:
                soft = run.limit_soft or 0.0
                exc = type("SoftTimeLimitExceeded", (SoftTimeLimitExceeded,), {"__init__": _soft_init(soft)})
                raise_in_thread(run.thread_id, exc)
                return
        _soft_async(fut, run.limit_soft or 0.0)

    def _hard(self, run: Run) -> None:
        with run.lock:
            if run.state != "running":
                return
            run.state = "abandoned"
        if run.async_future is not None:
            run.async_future.cancel()
        if run.on_hard is not None:
            run.on_hard(run)


def _soft_init(limit: float) -> Callable[[SoftTimeLimitExceeded], None]:
    # PyThreadState_SetAsyncExc raises a class, called without arguments: a subclass whose
    # constructor knows the limit gives the task the right message.
    def init(self: SoftTimeLimitExceeded) -> None:
        SoftTimeLimitExceeded.__init__(self, limit)

    return init


# -- asyncio ---------------------------------------------------------------------------------------


class _AsyncRun:
    """The asyncio task running one coroutine, for the soft limit."""

    task: asyncio.Task[Any] | None = None
    soft_fired: float = 0.0


def run_coroutine(loop: asyncio.AbstractEventLoop, coro: Any, run: Run | None) -> concurrent.futures.Future[Any]:
    """Schedule ``coro`` on ``loop``; with ``run``, its future is the run's, for the watchdog."""
    import asyncio

    state = _AsyncRun()

    async def wrapper() -> Any:
        state.task = asyncio.current_task()
        try:
            return await coro
        except asyncio.CancelledError:
            if state.soft_fired:
                raise SoftTimeLimitExceeded(state.soft_fired) from None
            raise

    fut = asyncio.run_coroutine_threadsafe(wrapper(), loop)
    fut._machinery_state = state  # type: ignore[attr-defined]
    fut._machinery_loop = loop  # type: ignore[attr-defined]
    if run is not None:
        run.async_future = fut
    return fut


def _soft_async(fut: concurrent.futures.Future[Any], limit: float) -> None:
    import asyncio

    state: _AsyncRun = fut._machinery_state  # type: ignore[attr-defined]
    loop: asyncio.AbstractEventLoop = fut._machinery_loop  # type: ignore[attr-defined]

    def fire() -> None:
        task = state.task
        if task is None or task.done():
            return
        # The future the task waits on (asyncio.sleep's, a reader's): failing it with the
        # exception raises it at the task's ``await``, where an ``except`` clause can catch it.
        waiter = getattr(task, "_fut_waiter", None)
        if type(waiter) is asyncio.Future and not waiter.done():
            waiter.set_exception(SoftTimeLimitExceeded(limit))
        else:  # waiting on another task or a gather: cancel, the wrapper turns it into the exception
            state.soft_fired = limit
            task.cancel()

    loop.call_soon_threadsafe(fire)


# -- the worker's side -------------------------------------------------------------------------


def call_limited(
    worker: Worker,
    sig: Signature,
    task: Task,
    values: list[Any],
    settle: Callable[[bool, BaseException | None], None] | None,
    revoke_run: Any = None,
) -> Any:
    """Run a worker's task under its time limits (:mod:`machinery.timelimit`), in a child process
    for the processes pool (:mod:`machinery.pool`). ``revoke_run`` (the worker's record of the
    running task, :mod:`machinery.revoke`) lets a revoke with ``terminate`` cancel an
    ``async def`` task here as on the worker's own path."""
    soft, hard = limits_for(sig, task, worker.time_limit, worker.soft_time_limit)
    if worker._pool is not None and not task.is_async:
        return worker._pool.run(sig, task, values, soft, hard)
    if soft is None and hard is None:
        return worker._run_async(task.fn, values, revoke_run) if task.is_async else task.fn(*values)
    on_hard = None
    if settle is not None and hard is not None:

        def on_hard(run: Run) -> None:
            _hard_limit(worker, run, sig, settle, hard)

    # without ``settle`` (the public ``process``) nobody could settle at the hard limit: soft only
    run = Run(soft, hard if on_hard is not None else None, on_hard)
    if worker._watchdog is None:
        with worker._loop_lock:
            if worker._watchdog is None:
                worker._watchdog = Watchdog(worker.consumer_tag)
    if task.is_async:
        coro = task.fn(*values)
        if revoke_run is not None:  # cancellable by a revoke with terminate
            coro = worker._running.guard(coro, revoke_run)
        fut = run_coroutine(worker._event_loop(), coro, run)
        worker._watchdog.watch(run)
        return run.call(fut.result, [])
    worker._watchdog.watch(run)
    return run.call(task.fn, values)


def _hard_limit(
    worker: Worker, run: Run, sig: Signature, settle: Callable[[bool, BaseException | None], None], hard: float
) -> None:
    """A task thread ran past its hard limit (called by the watchdog, which has marked the
    run abandoned): replace the thread, then store FAILURE (or RETRY) and settle the message
    on a thread of its own, since the watchdog must not wait for the backend."""
    exc = TimeLimitExceeded(hard)
    worker._current.pop(sig.uuid, None)

    def store() -> None:
        try:
            try:
                if sig.retry_count > 0:
                    worker._retry(sig, exc)
                    keep = False
                else:
                    keep = worker._failed(sig, exc, "")
            except Exception as err:  # noqa: BLE001 - settled like any unstorable state
                settle(False, err)
            else:
                settle(keep, None)
        except Exception:
            log.exception("could not settle the message of task %s (%s)", sig.name, sig.uuid)
        finally:
            worker._release_slot()
            with worker._settlers_lock:
                worker._settlers.discard(threading.current_thread())

    t = threading.Thread(target=store, name=f"{worker.consumer_tag}-timelimit", daemon=True)
    with worker._settlers_lock:  # started before a shutdown (which joins it) can see it
        t.start()
        worker._settlers.add(t)
    # an async task's thread is not abandoned: its wait ends with the cancellation and it goes on
    if run.async_future is not None:
        what = "cancelled it"
    else:
        what = f"abandoned its thread ({_replace_thread(worker, run.thread)} abandoned still running)"
    log.error("task %s (%s) exceeded its hard time limit of %gs: %s", sig.name, sig.uuid, hard, what)


def _replace_thread(worker: Worker, old: threading.Thread) -> int:
    """Start a task thread in place of ``old`` (abandoned); stop the worker for a restart
    when too many abandoned threads still run. Returns how many do."""
    from machinery.timelimit import EXIT_RESTART

    with worker._inflight_lock:
        worker._abandoned = [t for t in worker._abandoned if t.is_alive()]
        worker._abandoned.append(old)
        alive = len(worker._abandoned)
        if old in worker._threads:
            i = worker._threads.index(old)
            t = threading.Thread(target=worker._task_thread, name=f"{old.name}+", daemon=True)
            t.start()
            worker._threads[i] = t
    bound = worker.max_abandoned_threads or worker.concurrency
    if alive > bound and not worker._stop.is_set():
        log.error(
            "worker %s: %d threads abandoned at their hard time limit are still running (bound %d); "
            "stopping (warm shutdown) and exiting with status %d so that a supervisor starts a fresh process",
            worker.consumer_tag,
            alive,
            bound,
            EXIT_RESTART,
        )
        worker.exit_code = EXIT_RESTART
        worker._stop.set()
    return alive
