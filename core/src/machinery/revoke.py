"""Revoking sent tasks: the stored revocations, the worker's local copy, and termination.

A revocation is a task UUID stored in the result backend (a backend that declares
:attr:`~machinery.interfaces.Backend.supports_revocation`) with an expiry, by
:meth:`Server.revoke <machinery.server.Server.revoke>`, ``AsyncResult.revoke()`` or
``machinery revoke UUID...``. Every worker keeps a local copy of the live revocations, loaded
in full when it starts and refreshed by a background poll every :data:`POLL_INTERVAL` seconds
(one round trip that returns only what is new, by a sequence number the store assigns), so the
check before each task is a dictionary lookup and every worker sees a revocation within about
half a second.

A revoked task that has not started never runs: the worker stores FAILURE with the error
:data:`REVOKED` and acknowledges the message, wherever the task waited (queue, ETA, retry
back-off). Its callbacks are not sent (``on_success``, ``on_error``, a chain's next step), and
a chord whose member is revoked does not fire its callback (as with any failed member).

With ``terminate=True`` a task that is running is stopped: an ``async def`` task is cancelled
on the worker's event loop; a task running in a thread gets :class:`~machinery.errors.TaskRevoked`
raised in that thread (``PyThreadState_SetAsyncExc``). The latter is best effort: a thread
blocked in C (a socket read, ``time.sleep``) sees it only when it returns to Python code, and
task code that catches ``BaseException`` can swallow it (the worker still stores FAILURE
``revoked`` when the task returns).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from machinery.errors import TaskRevoked

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Coroutine, Iterable

    from machinery.interfaces import Backend

__all__ = [
    "POLL_INTERVAL",
    "REVOKED",
    "Revocation",
    "RevocationWatcher",
    "RunningTasks",
    "TaskRevoked",
    "revoke",
]

log = logging.getLogger("machinery.revoke")

#: The error string stored with the FAILURE of a revoked task.
REVOKED = "revoked"
#: Seconds between two polls of the store by a worker (a revocation reaches every worker within it).
POLL_INTERVAL = 0.5
#: Revocations read per round trip.
POLL_BATCH = 1000
#: Seconds between two clean-ups of expired revocations in the worker's local copy.
_PRUNE_EVERY = 60.0


@dataclass(frozen=True)
class Revocation:
    """One stored revocation, as :meth:`Backend.revocations_since` returns it.

    :param task_uuid: the revoked task.
    :param terminate: a running task must be stopped too.
    :param expires_in: seconds it stays stored, measured by the store's clock when it was read
        (None: never expires).
    """

    task_uuid: str
    terminate: bool
    expires_in: float | None


def revoke(
    backend: Backend, task_uuids: Iterable[str], *, terminate: bool = False, expires_in: float | None = None
) -> list[str]:
    """Store revocations for ``task_uuids`` in ``backend`` (what ``Server.revoke`` does).

    :param terminate: also stop the tasks that are running.
    :param expires_in: seconds the revocations stay stored (default: the backend's result
        lifetime, ``results_expire_in``; None there keeps them forever).
    :returns: the UUIDs revoked (duplicates and empty strings removed).
    :raises NotImplementedError: the backend cannot store revocations.
    :raises ValueError: ``expires_in`` is not positive.
    :raises BackendError: the store failed.
    """
    uuids = [u for u in dict.fromkeys(task_uuids) if u]
    cls = type(backend)
    if not cls.supports_revocation:
        raise NotImplementedError(
            f"the {cls.__name__} result backend cannot store revocations (supports_revocation is False)"
        )
    if not uuids:
        return []
    if expires_in is None:
        lifetime = backend.lifetime()
        ttl = None if lifetime is None else timedelta(seconds=lifetime)
    else:
        if not expires_in > 0:
            raise ValueError(f"expires_in must be a positive number of seconds, got {expires_in!r}")
        ttl = timedelta(seconds=expires_in)
    backend.revoke(uuids, terminate=terminate, ttl=ttl)
    return uuids


# -- termination of running tasks ---------------------------------------------------------------

_set_async_exc: Any = None


def _async_exc(thread_id: int, exc: type[BaseException] | None) -> int:
    """``PyThreadState_SetAsyncExc``: schedule ``exc`` in the thread (None clears a pending one)."""
    import ctypes  # here: only a worker terminating a thread task needs it

    global _set_async_exc
    if _set_async_exc is None:
        fn = ctypes.pythonapi.PyThreadState_SetAsyncExc
        fn.restype = ctypes.c_int  # no argtypes: None must go through as NULL (clears), not Py_None
        _set_async_exc = fn
    return int(_set_async_exc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None))


class _Run:
    __slots__ = ("armed", "fired", "is_async", "loop", "task", "thread")

    def __init__(self, thread: int, is_async: bool) -> None:
        self.thread = thread
        self.is_async = is_async
        #: Set by the task thread once it is inside the protected region (see RunningTasks).
        self.armed = False
        self.fired = False
        #: The asyncio task running an ``async def`` task, and its loop (set by :meth:`guard`).
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None


class RunningTasks:
    """The tasks a worker is running, so a revocation with ``terminate`` can stop them.

    The task thread calls :meth:`start`, sets ``run.armed = True`` first thing inside a ``try``
    whose ``except TaskRevoked`` settles the task, and calls :meth:`finish` in that ``try``'s
    inner ``finally``. :meth:`terminate` fires at most once per run, and only while it is
    armed, under one lock with :meth:`finish`: so an exception raised in a thread always lands
    in the run it was meant for, never in the next task of that thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}

    def start(self, task_uuid: str, is_async: bool = False) -> _Run:
        """Record the calling thread as running ``task_uuid`` (not armed yet); ``is_async``: an
        ``async def`` task, cancelled on its loop rather than interrupted in the thread."""
        run = _Run(threading.get_ident(), is_async)
        self._runs[task_uuid] = run
        return run

    @staticmethod
    async def guard(coro: Coroutine[Any, Any, Any], run: _Run) -> Any:
        """Run ``coro`` as ``run``'s asyncio task, so :meth:`terminate` can cancel it (the
        worker's wait for the result then ends only once the coroutine has really stopped)."""
        import asyncio

        run.loop = asyncio.get_running_loop()
        run.task = asyncio.current_task()
        if run.fired:  # terminated before it started
            coro.close()
            raise asyncio.CancelledError
        return await coro

    def finish(self, task_uuid: str, run: _Run) -> None:
        """Disarm the run; :raises TaskRevoked: when it was terminated (a pending exception in
        this thread that has not gone off yet is cleared first)."""
        with self._lock:
            run.armed = False
            if self._runs.get(task_uuid) is run:
                del self._runs[task_uuid]
            fired = run.fired
            if fired and not run.is_async:
                _async_exc(run.thread, None)
        if fired:
            raise TaskRevoked

    def discard(self, task_uuid: str, run: _Run) -> None:
        """Forget the run without raising (after a :class:`TaskRevoked` went off)."""
        with self._lock:
            run.armed = False
            if self._runs.get(task_uuid) is run:
                del self._runs[task_uuid]

    def terminate(self, task_uuid: str) -> bool:
        """Stop ``task_uuid`` if it runs here: cancel its coroutine, or raise
        :class:`TaskRevoked` in its thread. :returns: True when it was signalled."""
        with self._lock:
            run = self._runs.get(task_uuid)
            if run is None or not run.armed or run.fired:
                return False
            run.fired = True
            if run.is_async:
                task, loop = run.task, run.loop
                if task is not None and loop is not None:  # else guard() sees ``fired`` at its start
                    loop.call_soon_threadsafe(task.cancel)
            elif _async_exc(run.thread, TaskRevoked) != 1:  # the thread is gone
                return False
        return True

    def __contains__(self, task_uuid: object) -> bool:
        return task_uuid in self._runs


# -- the worker's local copy --------------------------------------------------------------------


class RevocationWatcher:
    """A worker's copy of the live revocations, kept fresh by a daemon thread.

    :param backend: the result backend (``supports_revocation``).
    :param on_terminate: called with the UUID of each new revocation with ``terminate``.
    :param interval: seconds between two polls.
    """

    def __init__(
        self, backend: Backend, on_terminate: Callable[[str], object] | None = None, interval: float = POLL_INTERVAL
    ) -> None:
        self.backend = backend
        self.on_terminate = on_terminate
        self.interval = interval
        #: UUID -> local expiry (``time.monotonic()``; ``inf`` for never): the worker's check.
        self.revoked: dict[str, float] = {}
        self._cursor = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned = time.monotonic()
        self._failing = False

    def poll(self) -> int:
        """Read what is new since the last poll (all of it the first time).

        :returns: how many revocations were new.
        :raises BackendError: the store failed.
        """
        n = 0
        while True:
            found, cursor = self.backend.revocations_since(self._cursor, POLL_BATCH)
            now = time.monotonic()
            revoked = self.revoked
            for r in found:
                revoked[r.task_uuid] = float("inf") if r.expires_in is None else now + r.expires_in
                if r.terminate and self.on_terminate is not None:
                    try:
                        self.on_terminate(r.task_uuid)
                    except Exception:
                        log.exception("could not terminate task %s", r.task_uuid)
            n += len(found)
            advanced = cursor != self._cursor
            self._cursor = cursor
            if len(found) < POLL_BATCH or not advanced:
                break
        if now - self._pruned > _PRUNE_EVERY:
            self._pruned = now
            for uuid in [u for u, exp in revoked.items() if exp <= now]:
                revoked.pop(uuid, None)
        return n

    def _poll_logged(self) -> None:
        try:
            self.poll()
        except Exception as exc:  # noqa: BLE001 - an outage must not stop the worker
            if not self._failing:
                log.warning("could not read revocations (retrying every %gs): %s", self.interval, exc)
            self._failing = True
        else:
            if self._failing:
                log.info("reading revocations again")
            self._failing = False

    def start(self) -> None:
        """Load every live revocation now, then poll in a daemon thread."""
        self._poll_logged()
        self._thread = threading.Thread(target=self._run, name="machinery-revocations", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll_logged()

    def stop(self) -> None:
        """Stop polling. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
            self._thread = None
