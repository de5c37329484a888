"""The :class:`Worker`: consumes a queue, runs tasks, stores states, sends callbacks.

One consumer thread takes deliveries from the broker only when a task slot is free (so a
worker never holds more unacknowledged messages than its concurrency) and hands them to a pool
of task threads, waking no more of them than the work needs (:mod:`machinery.dispatch`). Each
delivery is acknowledged only after the task's final state is stored and its callbacks are
sent; if that fails the message is given back for redelivery.

Signals (when launched in the main thread and ``no_unix_signals`` is off): the first SIGINT or
SIGTERM stops consuming, lets in-flight tasks finish and returns; a second one exits the process
at once, leaving in-flight messages unacknowledged so the broker delivers them again.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from machinery.config import redact_url
from machinery.dispatch import STALL, Dispatcher, Seat
from machinery.errors import (
    ArgumentTypeError,
    BackendError,
    BrokerAuthenticationError,
    DecodeError,
    MachineryError,
    RetryTaskLater,
    WorkerLostError,
)
from machinery.events import TaskEvent, WorkerEvent
from machinery.ratelimit import MAX_HOLD, RateLimiter
from machinery.retry import fibonacci_next
from machinery.revoke import POLL_INTERVAL, REVOKED, RevocationWatcher, RunningTasks, TaskRevoked
from machinery.signature import Arg, Signature, decode_signature, results_for
from machinery.task import TaskContext
from machinery.timelimit import Abandoned, call_limited
from machinery.workflow import chord_callback_to_send

if TYPE_CHECKING:
    import asyncio

    from machinery.interfaces import Delivery
    from machinery.registry import Heartbeat, WorkerInfo
    from machinery.server import Server
    from machinery.state import TaskResult
    from machinery.task import Task

__all__ = ["Worker"]

log = logging.getLogger("machinery.worker")

#: Concurrency used when 0 is asked for.
DEFAULT_CONCURRENCY = 8
#: Delay before an unregistered task is offered again (other workers may know it).
UNREGISTERED_REQUEUE_DELAY = 5.0
#: Delay before a delivery whose state could not be stored is offered again.
BACKEND_ERROR_REQUEUE_DELAY = 2.0
#: Delay before a worker whose broker refused its credentials tries again (not a transient fault).
AUTH_RETRY_DELAY = 60.0
#: Longest backend error message stored in the FAILURE that replaces an unstorable state.
MAX_STORED_BACKEND_ERROR = 1000
_ETA_TOLERANCE = 0.002


def _debug() -> bool:
    return log.isEnabledFor(logging.DEBUG)


def error_string(exc: BaseException) -> str:
    """The error string stored for a failed task, and prepended to its ``on_error`` callbacks'
    arguments: the exception's message, ``str(exc)`` (``"boom"`` for ``RuntimeError("boom")``),
    as Go stores ``err.Error()`` (``v2/worker.go``, ``taskFailed``).

    An exception with an empty message gives its class name (``"KeyboardInterrupt"``) instead:
    a Go error always has text, and an empty error string would hide that the task failed.
    The class and the traceback are in the worker's log line.
    """
    msg = str(exc)
    return msg if msg else type(exc).__name__


def _describe(exc: BaseException) -> str:
    """``"ValueError: message"``, for log lines (not stored)."""
    msg = str(exc)
    name = type(exc).__name__
    return f"{name}: {msg}" if msg else name


def _permanent(exc: BaseException) -> bool:
    """A backend error that no retry can fix (:attr:`BackendError.retryable` is False)."""
    return isinstance(exc, BackendError) and not exc.retryable


class Worker:
    """Runs registered tasks from one queue (Go's ``Worker``).

    :param server: the server holding tasks and transports.
    :param consumer_tag: a name for this worker (logs, events).
    :param concurrency: task threads (0: :data:`DEFAULT_CONCURRENCY`).
    :param queue: the queue to consume (default queue if None).
    """

    def __init__(self, server: Server, consumer_tag: str = "", concurrency: int = 0, queue: str | None = None) -> None:
        if concurrency < 0:
            raise ValueError("concurrency must be >= 0")
        self.server = server
        self.consumer_tag = consumer_tag or f"machinery-{os.getpid()}"
        self.concurrency = concurrency or DEFAULT_CONCURRENCY
        self.queue = queue or server.config.default_queue
        self._custom_queue = queue or ""
        self._error_handler: Callable[[BaseException], None] | None = None
        self._pre_task: Callable[[Signature], None] | None = None
        self._post_task: Callable[[Signature], None] | None = None
        self._pre_consume: Callable[[Worker], bool] | None = None
        self._stop = threading.Event()
        self._stopped = threading.Event()
        #: Seconds a running task may take before idle task threads are woken for the messages
        #: waiting (threads pool; :mod:`machinery.dispatch`). The processes pool wakes at once.
        self.dispatch_stall: float = STALL
        self._dispatch = Dispatcher(self.concurrency)
        self._threads: list[threading.Thread] = []
        self._consumer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self._signals = 0
        self._inflight_lock = threading.Lock()
        self._scheduler: Any = None
        #: Threads storing FAILURE for tasks whose state could never be stored (joined at shutdown).
        self._settlers: set[threading.Thread] = set()
        self._settlers_lock = threading.Lock()
        self.beat = False
        #: Seconds between two announcements in the worker registry (None: $MACHINERY_WORKER_HEARTBEAT or 5).
        self.heartbeat: float | None = None
        self.worker_id = ""
        self._started_at = 0.0
        self._registry: Heartbeat | None = None
        #: Tasks running now (uuid -> (name, start time)) and totals, for the worker registry.
        self._current: dict[str, tuple[str, float]] = {}
        self._stats_lock = threading.Lock()
        self._n_done = 0
        self._n_failed = 0
        #: Seconds before an unregistered task is offered again.
        self.unregistered_requeue_delay = UNREGISTERED_REQUEUE_DELAY
        #: Seconds before a delivery whose state could not be stored is offered again.
        self.backend_error_requeue_delay = BACKEND_ERROR_REQUEUE_DELAY
        #: Seconds before trying again when the broker refused the credentials.
        self.auth_retry_delay = AUTH_RETRY_DELAY
        #: Revoked task UUIDs (-> local expiry), kept fresh by a poll (:mod:`machinery.revoke`).
        self._revoked: dict[str, float] = {}
        self._revocations: RevocationWatcher | None = None
        self._running = RunningTasks()
        #: Seconds between two polls of the stored revocations.
        self.revoke_poll_interval = POLL_INTERVAL
        self._limiter = RateLimiter(server.backend)
        #: Longest wait for a rate-limit slot for which a message is held rather than given back.
        self.rate_limit_max_hold = MAX_HOLD
        hooks = server.plugins
        obs = hooks.has_task_observers()
        self._hooks = hooks
        self._obs_received = obs["received"]
        self._obs_started = obs["started"]
        self._obs_succeeded = obs["succeeded"]
        self._obs_failed = obs["failed"]
        self._obs_retried = obs["retried"]
        # -- pools and time limits (docs/pools.md) --
        cfg = server.config
        #: ``threads`` or ``processes`` (:mod:`machinery.pool`).
        self.pool: str = cfg.worker_pool
        #: The app's import path (``module:attr``), which the processes pool's children import.
        self.app: str = ""
        #: Default hard and soft time limits in seconds (None: none); tasks and signatures override.
        self.time_limit: float | None = cfg.time_limit or None
        self.soft_time_limit: float | None = cfg.soft_time_limit or None
        #: Threads pool: abandoned threads still running past which the worker stops (0: concurrency).
        self.max_abandoned_threads: int = cfg.max_abandoned_threads
        #: Processes pool: tasks per child before it is replaced (0: never).
        self.max_tasks_per_child: int = cfg.max_tasks_per_child
        #: Processes pool: resident memory in KiB past which a child is replaced after a task (0: never).
        self.max_memory_per_child: int = cfg.max_memory_per_child
        #: Processes pool: child deaths while running a task before it is stored as FAILURE.
        self.max_crashes: int = cfg.max_crashes
        #: The exit status the worker asks for when it stops (:data:`~machinery.timelimit.EXIT_RESTART`).
        self.exit_code = 0
        self._watchdog: Any = None
        self._abandoned: list[threading.Thread] = []
        self._pool: Any = None

    # -- handlers (Go's Set*Handler) --------------------------------------------------------------

    def set_error_handler(self, handler: Callable[[BaseException], None] | None) -> None:
        """Called with the exception when a task fails for good (instead of the default log)."""
        self._error_handler = handler

    def set_pre_task_handler(self, handler: Callable[[Signature], None] | None) -> None:
        """Called with the signature before each task runs."""
        self._pre_task = handler

    def set_post_task_handler(self, handler: Callable[[Signature], None] | None) -> None:
        """Called with the signature after each task ran (success or not)."""
        self._post_task = handler

    def set_pre_consume_handler(self, handler: Callable[[Worker], bool] | None) -> None:
        """Called before taking each message; returning False pauses consumption until it
        returns True again (checked every 0.1 s)."""
        self._pre_consume = handler

    def custom_queue(self) -> str:
        """The custom queue this worker consumes, or "" for the default queue."""
        return self._custom_queue

    def get_server(self) -> Server:
        """The server (Go's ``GetServer``)."""
        return self.server

    # -- lifecycle --------------------------------------------------------------------------------

    def _event(self) -> WorkerEvent:
        return WorkerEvent(
            consumer_tag=self.consumer_tag,
            queue=self.queue,
            concurrency=self.concurrency,
            broker=redact_url(self.server.broker_url),
            backend=redact_url(self.server.backend_url),
            tasks=tuple(self.server.get_registered_task_names()),
            worker=self,
        )

    def launch(self) -> None:
        """Consume until :meth:`quit` (or a signal); blocks. Returns after in-flight tasks finish."""
        installed = self._install_signals()
        try:
            self._start_threads()
            self._consume_loop()
        finally:
            self._shutdown()
            if installed:
                self._restore_signals(installed)

    def launch_in_background(self) -> Worker:
        """Start consuming in a background thread and return at once; stop with :meth:`quit`."""
        self._start_threads()
        self._consumer = threading.Thread(target=self._background, name=f"{self.consumer_tag}-consumer", daemon=True)
        self._consumer.start()
        return self

    def _background(self) -> None:
        try:
            self._consume_loop()
        finally:
            self._shutdown()

    def launch_async(self) -> Worker:
        """Alias of :meth:`launch_in_background` (Go's ``LaunchAsync``)."""
        return self.launch_in_background()

    def quit(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop consuming; with ``wait``, block until in-flight tasks have finished."""
        self._stop.set()
        if wait:
            self._stopped.wait(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the worker has stopped; True if it has."""
        return self._stopped.wait(timeout)

    @property
    def running(self) -> bool:
        """True between launch and the end of shutdown."""
        return bool(self._threads) and not self._stopped.is_set()

    def _start_threads(self) -> None:
        if self._threads:
            raise RuntimeError("worker already launched")
        if self.beat and self._scheduler is None and self.server.periodic_entries:
            from machinery.schedule import Scheduler  # type: ignore[import-not-found,unused-ignore]

            self._scheduler = Scheduler(self.server)
            self._scheduler.start()
        n = self.concurrency
        if self.pool == "processes":
            from machinery.pool import ProcessPool

            self._pool = ProcessPool(self, n)
        elif self.pool != "threads":
            raise ValueError(f"unknown worker pool {self.pool!r} (threads or processes)")
        # a processes pool's task threads always wait for a child: every one is worth waking
        self._dispatch = Dispatcher(n, 0.0 if self._pool is not None else self.dispatch_stall)
        for i in range(n):
            t = threading.Thread(target=self._task_thread, name=f"{self.consumer_tag}-task-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info(
            "worker %s consuming %r with concurrency %d (broker %s, backend %s)",
            self.consumer_tag,
            self.queue,
            n,
            redact_url(self.server.broker_url),
            redact_url(self.server.backend_url),
        )
        self._start_registry()
        self._start_revocations()
        self._safe_hook(self._hooks.worker_started, self._event())

    # -- revocations and rate limits ----------------------------------------------------------------

    def _start_revocations(self) -> None:
        backend = self.server.backend
        if type(backend).supports_revocation:
            self._revocations = RevocationWatcher(backend, self._running.terminate, self.revoke_poll_interval)
            self._revoked = self._revocations.revoked
            self._revocations.start()  # loads every live revocation before the first message
        else:
            log.debug("the %s backend cannot store revocations; revoke() is not available", type(backend).__name__)
        limited = [t.name for t in self.server.registry.tasks.values() if t.rate_limit is not None]
        if limited and not self._limiter.shared:
            log.warning(
                "the %s backend has no shared rate limiter: each worker enforces the rate limits of %s alone",
                type(backend).__name__,
                ", ".join(sorted(limited)),
            )

    def _settle_revoked(self, sig: Signature, delivery: Delivery) -> None:
        """A revoked task that has not run: store FAILURE ``revoked``, then acknowledge (given
        back for redelivery if the state cannot be stored)."""
        broker = self.server.broker
        try:
            self._revoked_failure(sig)
        except Exception as exc:  # noqa: BLE001 - the message must be settled either way
            self._report(exc)
            log.error("task %s (%s) is revoked, but %s; giving the message back", sig.name, sig.uuid, exc)
            broker.nack(delivery, requeue=True, delay=self.backend_error_requeue_delay)
            return
        self._settle_call(sig, "acknowledged", lambda: broker.ack(delivery))

    def _revoked_failure(self, sig: Signature, terminated: bool = False) -> bool:
        """Store FAILURE ``revoked`` (no callbacks are sent); returns False (acknowledge)."""
        self.server.backend.set_state_failure(sig, REVOKED)
        self._count(True)
        what = "terminated while running" if terminated else "not run"
        log.warning("task %s (%s) is revoked: %s, stored FAILURE %r", sig.name, sig.uuid, what, REVOKED)
        if self._obs_failed:
            event = TaskEvent(sig, self.consumer_tag, error=REVOKED, exc=TaskRevoked())
            self._safe_hook(self._hooks.task_failed, event)
        return False

    def _admit(self, sig: Signature, task: Task, delivery: Delivery) -> bool:
        """Reserve a rate-limit slot: hold the message until it (at most ``rate_limit_max_hold``
        seconds) and return True, or give the message back with a delay and return False."""
        assert task.rate_limit is not None
        broker = self.server.broker
        hold = self.rate_limit_max_hold
        try:
            reserved, wait = self._limiter.reserve(task.name, task.rate_limit, hold)
        except Exception as exc:  # noqa: BLE001 - the message must be settled either way
            self._report(exc)
            log.error("task %s (%s): the rate limiter failed (%s); giving the message back", sig.name, sig.uuid, exc)
            broker.nack(delivery, requeue=True, delay=self.backend_error_requeue_delay)
            return False
        if not reserved:
            later = max(wait - hold, 0.01)
            if _debug():
                log.debug("task %s (%s) over its rate limit; back in %.2fs", sig.name, sig.uuid, later)
            broker.nack(delivery, requeue=True, delay=later)
            # Back-pressure: this task slot stays taken for ``hold`` seconds, so a worker with a
            # backlog of over-limit messages cycles at most one of them per slot per ``hold``
            # seconds instead of spinning through the queue.
            self._stop.wait(hold)
            return False
        if wait > 0:
            time.sleep(wait)
        if sig.uuid in self._revoked:  # revoked while it was held
            self._settle_revoked(sig, delivery)
            return False
        return True

    # -- worker registry --------------------------------------------------------------------------

    def _start_registry(self) -> None:
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

    def info(self) -> WorkerInfo:
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

    def _count(self, failed: bool) -> None:
        with self._stats_lock:
            if failed:
                self._n_failed += 1
            else:
                self._n_done += 1

    def _shutdown(self) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.stop()
        self._dispatch.stop()  # the threads run what was handed in, then end
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
        self._safe_hook(self._hooks.worker_stopped, self._event())
        self._stopped.set()

    # -- signals ----------------------------------------------------------------------------------

    def _install_signals(self) -> dict[signal.Signals, Any] | None:
        if self.server.config.no_unix_signals or threading.current_thread() is not threading.main_thread():
            return None
        old: dict[signal.Signals, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, self._on_signal)
        return old

    def _restore_signals(self, old: dict[signal.Signals, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
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

    # -- consuming --------------------------------------------------------------------------------

    def _consume_loop(self) -> None:
        broker = self.server.broker
        stop = self._stop
        dispatch = self._dispatch
        backoff = 0.1
        while not stop.is_set():
            try:
                it = broker.consume(self.queue, prefetch=self.concurrency, stop=stop)
                try:
                    while not stop.is_set():
                        if not dispatch.reserve(stop):
                            break
                        if self._pre_consume is not None:
                            while not self._pre_consume(self) and not stop.is_set():
                                time.sleep(0.1)
                        try:
                            delivery = next(it)
                        except StopIteration:
                            dispatch.unreserve()
                            break
                        except BaseException:
                            dispatch.unreserve()
                            raise
                        dispatch.put(delivery)
                        backoff = 0.1
                finally:
                    close = getattr(it, "close", None)
                    if close is not None:
                        close()
            except BrokerAuthenticationError as exc:
                # Not transient: one ERROR line per attempt, and a long wait between attempts.
                self._report(exc)
                log.error(
                    "broker %s refused the credentials: %s; this is not a transient fault: fix the "
                    "user or password (in the URL or the server); trying again in %.0fs",
                    redact_url(self.server.broker_url),
                    redact_url(str(exc)),
                    self.auth_retry_delay,
                )
                stop.wait(self.auth_retry_delay)
                backoff = 0.1
            except MachineryError as exc:
                self._report(exc)
                log.warning("broker error: %s; reconnecting in %.1fs", redact_url(str(exc)), backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception as exc:
                self._report(exc)
                log.exception("unexpected error while consuming; restarting in %.1fs", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    @property
    def _inflight(self) -> int:
        """Messages taken from the broker and not yet finished by a task thread."""
        return self._dispatch.in_flight

    def _release_slot(self) -> None:
        """Free the slot of a delivery settled outside its task thread (the hard time limit)."""
        self._dispatch.release()

    def _task_thread(self) -> None:
        dispatch = self._dispatch
        seat = Seat()
        finished = False
        while True:
            item = dispatch.take(seat, finished)
            if item is None:
                return
            finished = True
            try:
                self.process_delivery(item)
            except Abandoned as exc:
                # the watchdog settled this delivery at the hard time limit and released its slot;
                # it started a replacement for this thread, which now ends (an async task's
                # thread, whose wait was only cancelled, goes on serving)
                finished = False
                if exc.args == ("async",):
                    continue
                dispatch.leave(seat)
                return
            except BaseException:
                log.exception("unexpected error while processing a delivery")

    # -- processing -------------------------------------------------------------------------------

    def _report(self, exc: BaseException) -> None:
        if self._error_handler is not None:
            try:
                self._error_handler(exc)
            except Exception:
                log.exception("error handler raised")

    def _safe_hook(self, hook: Callable[[Any], Any], event: Any) -> None:
        try:
            hook(event)
        except Exception:
            log.exception("a plugin's lifecycle hook raised")

    def process_delivery(self, delivery: Delivery) -> None:
        """Decode, run and acknowledge one delivery (public for brokers that push messages)."""
        broker = self.server.broker
        try:
            sig = decode_signature(delivery.body)
            if not sig.uuid:
                # its state would be stored under the empty key, overwritten by every such message
                raise DecodeError(delivery.body, "UUID: missing or empty task UUID")
        except DecodeError as exc:
            log.error("dropping malformed message from %r to the dead letters: %s", delivery.queue, exc.reason)
            log.error("malformed message body: %r", delivery.body[:2000])
            self._report(exc)
            broker.nack(delivery, requeue=False)
            return

        if sig.uuid in self._revoked:  # the one revocation check: a dict lookup
            self._settle_revoked(sig, delivery)
            return

        eta = sig.eta
        if eta is not None:
            early = eta.timestamp() - time.time()
            if early > _ETA_TOLERANCE:
                broker.nack(delivery, requeue=True, delay=early)
                return

        task = self.server.registry.tasks.get(sig.name)
        if task is None:
            if sig.ignore_when_task_not_registered:
                log.warning("task %s (%s) is not registered here; dropping it as it asks", sig.name, sig.uuid)
                broker.ack(delivery)
            else:
                delay = _jittered(self.unregistered_requeue_delay)
                log.warning(
                    "task %s (%s) is not registered here; requeued for another worker in %.1fs",
                    sig.name,
                    sig.uuid,
                    delay,
                )
                broker.nack(delivery, requeue=True, delay=delay)
            return
        if task.rate_limit is not None and not self._admit(sig, task, delivery):
            return

        settled = False

        def settle(keep: bool, error: BaseException | None) -> None:
            nonlocal settled
            settled = True
            if error is not None and _permanent(error):
                # This may run on the thread a backend sends its batched writes from (a store's
                # ``Completion`` resolved there), where a blocking store could wait for
                # itself: the FAILURE is stored from another thread.
                self._settle_permanent_in_background(sig, delivery, error)
            elif error is not None:  # a state could not be stored: redeliver
                self._report(error)
                log.error("task %s (%s): %s; giving the message back for redelivery", sig.name, sig.uuid, error)
                try:
                    broker.nack(delivery, requeue=True, delay=self.backend_error_requeue_delay)
                except Exception:
                    log.exception("could not give the message back; the broker will redeliver it")
            elif keep:
                self._settle_call(
                    sig, "dropped (kept for the dead letters)", lambda: broker.nack(delivery, requeue=False)
                )
            else:
                self._settle_call(sig, "acknowledged", lambda: broker.ack(delivery))

        try:
            keep = self._process(sig, task, settle)
        except Exception as exc:  # a state could not be stored: redeliver
            if settled:  # the acknowledgement itself failed: as before, not a reason to redeliver
                raise
            if _permanent(exc):  # never stored, however often it runs: FAILURE instead
                settled = True
                self._settle_permanent(sig, delivery, exc)
                return
            settle(False, exc)
            return
        if keep is not None:
            settle(keep, None)

    def _settle_call(self, sig: Signature, what: str, call: Callable[[], Any]) -> None:
        """Acknowledge or reject a message whose final state is stored. If the broker refuses
        (a full disk, a lost connection), that is said in one line, with what happens next:
        the message comes back and the task runs again (at-least-once), nothing is lost."""
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - any broker failure here has the same outcome
            self._report(exc)
            broker = self.server.broker
            if broker.redelivers_unacked:
                after = float(getattr(broker, "lease", broker.redelivery_timeout))
                then = f"the broker delivers it again within about {after:g}s and the task runs again"
            else:
                then = "the broker may deliver it again, and the task then runs again"
            log.error(
                "task %s (%s): its final state is stored, but the message could not be %s (%s); %s",
                sig.name,
                sig.uuid,
                what,
                redact_url(str(exc)),
                then,
            )

    def _settle_permanent(self, sig: Signature, delivery: Delivery, error: BaseException) -> None:
        """Settle a delivery whose state the backend refused for good (a result bigger than the
        store takes, say). Redelivering would run the task again and fail the same way forever,
        so a small FAILURE that says why is stored instead and the message acknowledged. If
        that FAILURE cannot be stored either: for good, the message is dropped (dead-lettered
        where the broker keeps them); for now (connection lost), it is given back as usual."""
        broker = self.server.broker
        self._report(error)
        reason = _describe(error)
        if len(reason) > MAX_STORED_BACKEND_ERROR:
            reason = reason[: MAX_STORED_BACKEND_ERROR - 3] + "..."
        message = f"the result backend cannot store this task's state: {reason}"
        try:
            self.server.backend.set_state_failure(sig, message)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the message must be settled
            if not _permanent(exc):
                log.error(
                    "task %s (%s): %s; storing FAILURE instead failed too (%s); giving the message back for redelivery",
                    sig.name,
                    sig.uuid,
                    error,
                    exc,
                )
                broker.nack(delivery, requeue=True, delay=self.backend_error_requeue_delay)
                return
            log.error(
                "task %s (%s): %s; storing FAILURE instead failed too (%s); "
                "dropping the message (dead-lettered where the broker keeps them)",
                sig.name,
                sig.uuid,
                error,
                exc,
            )
            broker.nack(delivery, requeue=False)
            return
        log.error(
            "task %s (%s): %s; stored FAILURE instead and acknowledged the message (it would fail again)",
            sig.name,
            sig.uuid,
            error,
        )
        self._count(True)
        if self._obs_failed:
            self._safe_hook(self._hooks.task_failed, TaskEvent(sig, self.consumer_tag, error=message, exc=error))
        self._settle_call(sig, "acknowledged", lambda: broker.ack(delivery))

    def _settle_permanent_in_background(self, sig: Signature, delivery: Delivery, error: BaseException) -> None:
        def run() -> None:
            try:
                self._settle_permanent(sig, delivery, error)
            except Exception:
                log.exception("could not settle the message of task %s (%s)", sig.name, sig.uuid)
            finally:
                with self._settlers_lock:
                    self._settlers.discard(threading.current_thread())

        t = threading.Thread(target=run, name=f"{self.consumer_tag}-settle", daemon=True)
        with self._settlers_lock:
            self._settlers.add(t)
        t.start()

    def process(self, sig: Signature, task: Task) -> bool:
        """Run one task and store its outcome (Go's ``Process``).

        :returns: True when the message must be kept rather than deleted
            (``stop_task_deletion_on_error``).
        :raises Exception: when a state could not be stored or a callback not sent; the
            caller then gives the message back for redelivery.
        """
        keep = self._process(sig, task, None)
        assert keep is not None
        return keep

    def _process(
        self, sig: Signature, task: Task, settle: Callable[[bool, BaseException | None], None] | None
    ) -> bool | None:
        # With ``settle``, a success without follow-ups (callbacks, chord) is stored without
        # waiting (``set_state_success(..., wait=False)``, see ``_succeeded``): this returns None
        # and ``settle`` runs once the state is stored (possibly on another thread), so a store
        # that batches writes acknowledges after the store without making this thread wait.
        backend = self.server.backend
        try:
            values = task.bind([a.value for a in sig.args])
        except ArgumentTypeError as exc:
            backend.set_state_received(sig)
            return self._failed(sig, exc, "")
        # RECEIVED then STARTED, written in one round trip where the backend can
        backend.set_state_received_started(sig)
        if _debug():
            log.debug("received %s %s args=%r", sig.name, sig.uuid, values)
        if self._obs_received:
            self._safe_hook(self._hooks.task_received, TaskEvent(sig, self.consumer_tag))
        if self._obs_started:
            self._safe_hook(self._hooks.task_started, TaskEvent(sig, self.consumer_tag))
        if self._pre_task is not None:
            self._pre_task(sig)
        t0 = time.perf_counter()
        current = self._current
        current[sig.uuid] = (sig.name, time.time())
        running = self._running
        run = running.start(sig.uuid, task.is_async)
        ctx: TaskContext | None = None
        try:
            try:
                try:
                    run.armed = True  # from here a revoke with terminate may interrupt it
                    if sig.uuid in self._revoked:  # revoked since the message was taken
                        raise TaskRevoked
                    if task.takes_context and (self._pool is None or task.is_async):
                        ctx = TaskContext(sig, self.server, self.consumer_tag)
                        values.insert(0, ctx)
                    if (
                        self._pool is not None
                        or self.time_limit
                        or self.soft_time_limit
                        or task.time_limit
                        or task.soft_time_limit
                        or sig.headers
                    ):
                        value = call_limited(self, sig, task, values, settle, run)
                    elif task.is_async:
                        value = self._run_async(task.fn, values, run)
                    else:
                        value = task.fn(*values)
                finally:
                    if ctx is not None:
                        ctx.finish()  # no progress report after this (it would hide the final state)
                    running.finish(sig.uuid, run)  # raises TaskRevoked if it was terminated
                results = results_for(value)
            except TaskRevoked:
                running.discard(sig.uuid, run)
                return self._revoked_failure(sig, terminated=run.fired)
            except RetryTaskLater as exc:
                self._retry_in(sig, exc.retry_in, exc)
                return False
            except WorkerLostError as exc:
                from machinery.pool import child_died

                return child_died(self, sig, exc)
            except Exception as exc:  # noqa: BLE001 - a task's error is a FAILURE, never a dead worker
                tb = traceback.format_exc()
                if sig.retry_count > 0:
                    self._retry(sig, exc)
                    return False
                return self._failed(sig, exc, tb)
            return self._succeeded(sig, results, time.perf_counter() - t0, settle)
        finally:
            current.pop(sig.uuid, None)
            if self._post_task is not None:
                self._post_task(sig)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio

        if self._loop is None:
            with self._loop_lock:
                if self._loop is None:
                    loop = asyncio.new_event_loop()
                    threading.Thread(target=loop.run_forever, name=f"{self.consumer_tag}-asyncio", daemon=True).start()
                    self._loop = loop
        return self._loop

    def _run_async(self, fn: Callable[..., Any], values: list[Any], run: Any = None) -> Any:
        import asyncio

        coro = fn(*values)
        if run is not None:  # cancellable by a revoke with terminate
            coro = self._running.guard(coro, run)
        return asyncio.run_coroutine_threadsafe(coro, self._event_loop()).result()

    def _succeeded(
        self,
        sig: Signature,
        results: list[TaskResult],
        runtime: float,
        settle: Callable[[bool, BaseException | None], None] | None,
    ) -> bool | None:
        """The one success path: store SUCCESS; once it is stored, count it, fire
        ``task_succeeded``, send the follow-ups (``on_success`` callbacks, the chord callback),
        then settle (acknowledge): nothing after the store happens unless it is stored.

        The store may answer later (``wait=False``, a backend that batches writes) only when
        the message is settled through ``settle`` and there are no follow-ups, which are sent
        from this task thread: the rest then runs on the thread the store answers on, and this
        returns None. Otherwise the store is confirmed before it returns, its errors
        propagate, and this returns False (the message is acknowledged, nothing kept).
        """
        no_chord = not sig.group_uuid or sig.chord_callback is None
        defer = settle is not None and no_chord and not sig.on_success
        stored = self.server.backend.set_state_success(sig, results, wait=not defer)
        if not stored.done():
            assert settle is not None

            def on_stored(error: BaseException | None) -> None:
                if error is None:
                    try:
                        self._after_success(sig, results, runtime, True)
                    except Exception:  # the state is stored: the message is settled all the same
                        log.exception("task %s (%s): after its success was stored", sig.name, sig.uuid)
                settle(False, error)

            stored.add_done_callback(on_stored)
            return None
        stored.result()  # a deferred store that answered at once may have failed
        self._after_success(sig, results, runtime, no_chord)
        if defer:
            assert settle is not None
            settle(False, None)
            return None
        return False

    def _after_success(self, sig: Signature, results: list[TaskResult], runtime: float, no_chord: bool) -> None:
        self._count(False)
        if self._obs_succeeded:
            self._fire_succeeded(sig, results, runtime)
        if sig.on_success or not no_chord:
            self._send_follow_ups(sig, results, no_chord)

    def _fire_succeeded(self, sig: Signature, results: list[TaskResult], runtime: float) -> None:
        """The ``task_succeeded`` hook (callers check ``_obs_succeeded``, so a worker without
        observers pays nothing on its success path)."""
        self._safe_hook(self._hooks.task_succeeded, TaskEvent(sig, self.consumer_tag, results=results, runtime=runtime))

    def _send_follow_ups(self, sig: Signature, results: list[TaskResult], no_chord: bool) -> None:
        """Send ``on_success`` callbacks and, for the member of a chord's group, the chord
        callback once the whole group has succeeded.

        The results are appended to every ``on_success`` callback unless *the finished task*
        is immutable (``sig.immutable``); the callbacks' own flags play no part here, as in Go's
        ``Worker.taskSucceeded`` (``v2/worker.go``: ``if signature.Immutable == false``). The
        chord callback's own flag decides for the chord (:func:`chord_callback_to_send`)."""
        server = self.server
        pass_results = not sig.immutable
        for nxt in sig.on_success:
            if pass_results:
                nxt.args.extend(Arg._trusted(r.type, r.value) for r in results)
            server.send_task(nxt)
        if no_chord:
            return
        cb = chord_callback_to_send(server.backend, sig)
        if cb is not None:
            server.send_task(cb)

    def _failed(self, sig: Signature, exc: BaseException, tb: str) -> bool:
        server = self.server
        err = error_string(exc)
        server.backend.set_state_failure(sig, err)
        self._count(True)
        if self._error_handler is not None:
            self._report(exc)
        elif self._obs_failed:
            pass  # the logging plugin logs it (with the traceback)
        elif tb:
            log.error("failed processing task %s (%s): %s\n%s", sig.name, sig.uuid, _describe(exc), tb.rstrip())
        else:
            log.error("failed processing task %s (%s): %s", sig.name, sig.uuid, _describe(exc))
        if self._obs_failed:
            self._safe_hook(
                self._hooks.task_failed, TaskEvent(sig, self.consumer_tag, error=err, exc=exc, traceback=tb)
            )
        for cb in sig.on_error:
            cb.args.insert(0, Arg._trusted("string", err))
            server.send_task(cb)
        return sig.stop_task_deletion_on_error

    def _retry(self, sig: Signature, exc: BaseException) -> None:
        self.server.backend.set_state_retry(sig)
        sig.retry_count -= 1
        sig.retry_timeout = fibonacci_next(sig.retry_timeout)
        self._reschedule(sig, timedelta(seconds=sig.retry_timeout), exc)

    def _retry_in(self, sig: Signature, retry_in: timedelta, exc: BaseException) -> None:
        self.server.backend.set_state_retry(sig)
        self._reschedule(sig, retry_in, exc)

    def _reschedule(self, sig: Signature, delay: timedelta, exc: BaseException) -> None:
        sig.eta = datetime.now(timezone.utc) + delay
        err = error_string(exc)
        secs = delay.total_seconds()
        if self._obs_retried:
            self._safe_hook(
                self._hooks.task_retried, TaskEvent(sig, self.consumer_tag, error=err, exc=exc, retry_in=secs)
            )
        else:
            log.warning("task %s (%s) failed: %s; retrying in %gs", sig.name, sig.uuid, _describe(exc), secs)
        self.server.producer.republish(sig)


def _jittered(delay: float) -> float:
    """``delay`` times a random factor in [0.5, 1.5).

    A task given back for another worker comes back when the delay ends, and on a Redis list the
    consumer that has waited longest in its blocking pop gets it. Python and Go consumers re-block
    every second, so with a fixed delay the message came back at the same point of their cycles
    every time and the same (wrong) worker took it again and again (a Go-only task bounced
    between one Python worker and the delayed set for 20 s beside an idle Go worker). A delay
    spread over more than a second lands anywhere in those cycles."""
    return delay * (0.5 + random.random()) if delay > 0 else 0.0
