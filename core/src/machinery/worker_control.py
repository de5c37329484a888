"""The :class:`~machinery.worker.Worker`'s registry announcements, shutdown and signal handling.

Functions of a worker (``self``), bound as :class:`~machinery.worker.Worker` methods in its
class body.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from machinery.registry import WorkerInfo
    from machinery.worker import Worker


log = logging.getLogger("machinery.worker")


# -- worker registry --------------------------------------------------------------------------


def _start_registry(self: Worker) -> None:
    from machinery.registry import Heartbeat, heartbeat_interval, new_worker_id

    self._started_at = time.time()
    self.worker_id = new_worker_id(self.consumer_tag)
    backend = self.server.backend
    if not type(backend).supports_worker_registry:
        log.debug("the %s backend has no worker registry; this worker is not announced", type(backend).__name__)
        return
    interval = self.heartbeat if self.heartbeat is not None else heartbeat_interval()
    self._registry = Heartbeat(backend, self.info, interval)
    self._registry.start()


def info(self: Worker) -> WorkerInfo:
    """This worker's :class:`~machinery.registry.WorkerInfo` now (id, host, pid, queues,
    concurrency, start time, tasks done/failed, tasks running)."""
    import socket

    from machinery import __version__
    from machinery.registry import DEFAULT_HEARTBEAT, WorkerInfo

    current = tuple(
        {"uuid": uuid, "name": name, "started": started} for uuid, (name, started) in list(self._current.items())
    )
    with self._stats_lock:
        done, failed = self._n_done, self._n_failed
    return WorkerInfo(
        worker_id=self.worker_id,
        consumer_tag=self.consumer_tag,
        host=socket.gethostname(),
        pid=os.getpid(),
        queues=(self.queue,),
        concurrency=self.concurrency,
        pool=self.pool,
        started=self._started_at,
        heartbeat=time.time(),
        interval=self._registry.interval if self._registry is not None else DEFAULT_HEARTBEAT,
        tasks_done=done,
        tasks_failed=failed,
        current=current,
        version=__version__,
    )


def _count(self: Worker, failed: bool) -> None:
    with self._stats_lock:
        if failed:
            self._n_failed += 1
        else:
            self._n_done += 1


def _shutdown(self: Worker) -> None:
    self._stop.set()
    if self._scheduler is not None:
        self._scheduler.stop()
    waiting = self._dispatch.stop()  # the threads finish their tasks, then end
    if waiting:  # read ahead, not started: back to the broker, keeping their place where it can
        try:
            self.server.broker.give_back(waiting)
        except Exception as exc:  # noqa: BLE001 - unacknowledged, they come back when the broker redelivers
            log.warning("could not give back %d message(s) not started: %s", len(waiting), exc)
    for t in self._threads:
        t.join()
    with self._settlers_lock:
        settlers = list(self._settlers)
    for t in settlers:
        t.join()
    if self._watchdog is not None:
        self._watchdog.stop()
    if self._pool is not None:
        self._pool.close()
    if self._loop is not None:
        self._loop.call_soon_threadsafe(self._loop.stop)
    if self._registry is not None:
        self._registry.stop()
        self._registry = None
    if self._revocations is not None:
        self._revocations.stop()
    if self._pinned is not None:  # a worker stopped inside a longer-lived process
        self._pinned.undo()
        self._pinned = None
    self._safe_hook(self._hooks.worker_stopped, self._event())
    self._stopped.set()


# -- signals ----------------------------------------------------------------------------------


def _install_signals(self: Worker) -> dict[signal.Signals, Any] | None:
    if self.server.config.no_unix_signals or threading.current_thread() is not threading.main_thread():
        return None
    old: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, self._on_signal)
    return old


def _restore_signals(self: Worker, old: dict[signal.Signals, Any]) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)


def _on_signal(self: Worker, signum: int, frame: object) -> None:
    self._signals += 1
    if self._signals == 1:
        log.warning(
            "signal %s: warm shutdown, finishing %d in-flight task(s); send it again to exit now",
            signal.Signals(signum).name,
            self._inflight,
        )
        self._stop.set()
    else:
        log.warning("second signal: exiting now; in-flight tasks stay unacknowledged for redelivery")
        if self._pool is not None:
            self._pool.kill()
        logging.shutdown()
        os._exit(128 + signum)
