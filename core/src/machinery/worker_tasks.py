"""Running a delivery's task for the :class:`~machinery.worker.Worker`: decoding, admitting,
calling the task, storing its state, sending its follow-ups, retries, and the settling of states
the backend could not store.

Functions of a worker (``self``), bound as :class:`~machinery.worker.Worker` methods in its
class body (the same methods as before, so no extra call per task).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from machinery.config import redact_url
from machinery.dispatch import task_code_ran
from machinery.errors import (
    ArgumentTypeError,
    BackendError,
    DecodeError,
    RetryTaskLater,
    WorkerLostError,
)
from machinery.events import TaskEvent
from machinery.retry import fibonacci_next
from machinery.revoke import TaskRevoked
from machinery.signature import Arg, Signature, decode_signature, results_for
from machinery.task import TaskContext
from machinery.timelimit import call_limited
from machinery.workflow import chord_callback_to_send

if TYPE_CHECKING:
    import asyncio

    from machinery.interfaces import Delivery
    from machinery.state import TaskResult
    from machinery.task import Task
    from machinery.worker import Worker


log = logging.getLogger("machinery.worker")

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
    return str(exc) or type(exc).__name__


def _describe(exc: BaseException) -> str:
    """``"ValueError: message"``, for log lines (not stored)."""
    msg, name = str(exc), type(exc).__name__
    return f"{name}: {msg}" if msg else name


def _permanent(exc: BaseException) -> bool:
    """A backend error that no retry can fix (:attr:`BackendError.retryable` is False)."""
    return isinstance(exc, BackendError) and not exc.retryable


# -- processing -------------------------------------------------------------------------------


def _report(self: Worker, exc: BaseException) -> None:
    if self._error_handler is not None:
        try:
            self._error_handler(exc)
        except Exception:
            log.exception("error handler raised")


def _safe_hook(self: Worker, hook: Callable[[Any], Any], event: Any) -> None:
    try:
        hook(event)
    except Exception:
        log.exception("a plugin's lifecycle hook raised")


def process_delivery(self: Worker, delivery: Delivery) -> None:
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
            self._settle_call(sig, "dropped (kept for the dead letters)", lambda: broker.nack(delivery, requeue=False))
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


def _settle_call(self: Worker, sig: Signature, what: str, call: Callable[[], Any]) -> None:
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


def _settle_permanent(self: Worker, sig: Signature, delivery: Delivery, error: BaseException) -> None:
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


def _settle_permanent_in_background(self: Worker, sig: Signature, delivery: Delivery, error: BaseException) -> None:
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


def process(self: Worker, sig: Signature, task: Task) -> bool:
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
    self: Worker, sig: Signature, task: Task, settle: Callable[[bool, BaseException | None], None] | None
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
                task_code_ran(time.perf_counter() - t0)
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


def _event_loop(self: Worker) -> asyncio.AbstractEventLoop:
    import asyncio

    if self._loop is None:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name=f"{self.consumer_tag}-asyncio", daemon=True).start()
                self._loop = loop
    return self._loop


def _run_async(self: Worker, fn: Callable[..., Any], values: list[Any], run: Any = None) -> Any:
    import asyncio

    coro = fn(*values)
    if run is not None:  # cancellable by a revoke with terminate
        coro = self._running.guard(coro, run)
    return asyncio.run_coroutine_threadsafe(coro, self._event_loop()).result()


def _succeeded(
    self: Worker,
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


def _after_success(self: Worker, sig: Signature, results: list[TaskResult], runtime: float, no_chord: bool) -> None:
    self._count(False)
    if self._obs_succeeded and (self._obs_succeeded_beyond_log or self._task_log.isEnabledFor(logging.INFO)):
        self._fire_succeeded(sig, results, runtime)
    if sig.on_success or not no_chord:
        self._send_follow_ups(sig, results, no_chord)


def _fire_succeeded(self: Worker, sig: Signature, results: list[TaskResult], runtime: float) -> None:
    """The ``task_succeeded`` hook (callers check ``_obs_succeeded``, so a worker without
    observers pays nothing on its success path)."""
    self._safe_hook(self._hooks.task_succeeded, TaskEvent(sig, self.consumer_tag, results=results, runtime=runtime))


def _send_follow_ups(self: Worker, sig: Signature, results: list[TaskResult], no_chord: bool) -> None:
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


def _failed(self: Worker, sig: Signature, exc: BaseException, tb: str) -> bool:
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
        self._safe_hook(self._hooks.task_failed, TaskEvent(sig, self.consumer_tag, error=err, exc=exc, traceback=tb))
    for cb in sig.on_error:
        cb.args.insert(0, Arg._trusted("string", err))
        server.send_task(cb)
    return sig.stop_task_deletion_on_error


def _retry(self: Worker, sig: Signature, exc: BaseException) -> None:
    self.server.backend.set_state_retry(sig)
    sig.retry_count -= 1
    sig.retry_timeout = fibonacci_next(sig.retry_timeout)
    self._reschedule(sig, timedelta(seconds=sig.retry_timeout), exc)


def _retry_in(self: Worker, sig: Signature, retry_in: timedelta, exc: BaseException) -> None:
    self.server.backend.set_state_retry(sig)
    self._reschedule(sig, retry_in, exc)


def _reschedule(self: Worker, sig: Signature, delay: timedelta, exc: BaseException) -> None:
    sig.eta = datetime.now(timezone.utc) + delay
    err = error_string(exc)
    secs = delay.total_seconds()
    if self._obs_retried:
        self._safe_hook(self._hooks.task_retried, TaskEvent(sig, self.consumer_tag, error=err, exc=exc, retry_in=secs))
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
