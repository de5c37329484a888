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
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from machinery import logging_plugin as _logging_plugin
from machinery import worker_control as _control
from machinery import worker_tasks as _tasks
from machinery.config import redact_url
from machinery.dispatch import STALL, Dispatcher, Seat
from machinery.errors import BrokerAuthenticationError, MachineryError
from machinery.events import TaskEvent, WorkerEvent
from machinery.ratelimit import MAX_HOLD, RateLimiter
from machinery.revoke import POLL_INTERVAL, REVOKED, RevocationWatcher, RunningTasks, TaskRevoked
from machinery.signature import Signature
from machinery.timelimit import Abandoned

# error_string, _jittered and MAX_STORED_BACKEND_ERROR live in machinery.worker_tasks now;
# they stay importable from here.
from machinery.worker_tasks import MAX_STORED_BACKEND_ERROR as MAX_STORED_BACKEND_ERROR
from machinery.worker_tasks import _debug
from machinery.worker_tasks import _jittered as _jittered
from machinery.worker_tasks import error_string as error_string

if TYPE_CHECKING:
    import asyncio

    from machinery.interfaces import Delivery
    from machinery.registry import Heartbeat
    from machinery.server import Server
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
        #: Whether a plugin other than the built-in logging one observes successes; when none
        #: does, the event is built only while ``machinery.task`` logs at INFO (its one use).
        self._obs_succeeded_beyond_log = hooks.has_task_observers(besides=(_logging_plugin.__name__,))["succeeded"]
        self._task_log = _logging_plugin.task_log
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
        #: Messages taken beyond the concurrency while tasks are quick (:mod:`machinery.dispatch`).
        self.prefetch: int = (
            cfg.worker_prefetch
            if cfg.worker_prefetch is not None
            else type(server.broker).default_read_ahead(self.concurrency)
        )
        #: ``auto``, a CPU list or ``""``: the CPUs its threads are kept on (:mod:`machinery.affinity`).
        self.cpu_affinity: str = cfg.worker_cpu_affinity
        self._pinned: Any = None
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
        if self.cpu_affinity:  # first: the threads started below inherit the CPU
            from machinery.affinity import pin_worker

            self._pinned = pin_worker(self.cpu_affinity)
        try:
            self._start_parts()
        except BaseException:
            if self._pinned is not None:  # not started: the process gets its CPUs back
                self._pinned.undo()
                self._pinned = None
            raise

    def _start_parts(self) -> None:
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
        stall = 0.0 if self._pool is not None else self.dispatch_stall
        self._dispatch = Dispatcher(n, stall, prefetch=self.prefetch)
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

    # -- consuming --------------------------------------------------------------------------------

    def _consume_loop(self) -> None:
        broker = self.server.broker
        stop = self._stop
        dispatch = self._dispatch
        backoff = 0.1
        while not stop.is_set():
            try:
                it = broker.consume(self.queue, prefetch=self.concurrency + self.prefetch, stop=stop)
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

    # -- defined as functions of the worker in other modules, bound here as its methods ----------
    # (the same methods as before the split: no extra call per task)

    # registry, shutdown and signals (machinery.worker_control)
    _start_registry = _control._start_registry
    info = _control.info
    _count = _control._count
    _shutdown = _control._shutdown
    _install_signals = _control._install_signals
    _restore_signals = _control._restore_signals
    _on_signal = _control._on_signal

    # decoding, running and settling deliveries (machinery.worker_tasks)
    _report = _tasks._report
    _safe_hook = _tasks._safe_hook
    process_delivery = _tasks.process_delivery
    _settle_call = _tasks._settle_call
    _settle_permanent = _tasks._settle_permanent
    _settle_permanent_in_background = _tasks._settle_permanent_in_background
    process = _tasks.process
    _process = _tasks._process
    _event_loop = _tasks._event_loop
    _run_async = _tasks._run_async
    _succeeded = _tasks._succeeded
    _after_success = _tasks._after_success
    _fire_succeeded = _tasks._fire_succeeded
    _send_follow_ups = _tasks._send_follow_ups
    _failed = _tasks._failed
    _retry = _tasks._retry
    _retry_in = _tasks._retry_in
    _reschedule = _tasks._reschedule
