"""The default logging plugin: observes task and worker events and logs them with stdlib logging.

It does not observe ``task_received``/``task_started`` (the worker logs those at DEBUG itself),
so the hot path builds no event objects for them unless another plugin asks.

Loggers: ``machinery.task`` for task events, ``machinery.worker`` for worker events. URLs are
already redacted in the events. Block it with ``MACHINERY_DISABLE_PLUGINS`` is not possible
(it is built in); silence it with ``logging.getLogger("machinery.task").setLevel(...)``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from machinery._hookimpl import hookimpl

if TYPE_CHECKING:
    from machinery.events import TaskEvent, WorkerEvent

task_log = logging.getLogger("machinery.task")
worker_log = logging.getLogger("machinery.worker")


def _short(values: object, limit: int = 200) -> str:
    text = repr(values)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _extra(event: TaskEvent, state: str) -> dict[str, object]:
    # The fields ``--log-format json`` puts in each line (``machinery.jsonlog``).
    sig = event.signature
    extra: dict[str, object] = {
        "task_name": sig.name,
        "task_uuid": sig.uuid,
        "state": state,
        "duration": round(event.runtime, 6),
        "consumer_tag": event.consumer_tag,
    }
    # The trace id of a W3C ``traceparent`` header (``00-<trace id>-<span id>-<flags>``), for the
    # hooks that run outside the task's thread (a backend confirming writes later), where no
    # span is current; elsewhere the JSON formatter takes the current span's.
    parent = sig.headers.get("traceparent") if sig.headers else None
    if isinstance(parent, str) and parent.count("-") == 3:
        extra["trace_id"] = parent.split("-")[1]
    return extra


@hookimpl
def machinery_task_succeeded(event: TaskEvent) -> None:
    """Log at INFO: name, UUID, results and run time."""
    if task_log.isEnabledFor(logging.INFO):
        sig = event.signature
        task_log.info(
            "succeeded %s %s in %.1fms: %s",
            sig.name,
            sig.uuid,
            event.runtime * 1000,
            _short([r.value for r in event.results]),
            extra=_extra(event, "SUCCESS"),
        )


@hookimpl
def machinery_task_failed(event: TaskEvent) -> None:
    """Log at ERROR, with the traceback when the task raised."""
    sig = event.signature
    error = _with_class(event)
    extra = _extra(event, "FAILURE")
    if event.traceback:
        task_log.error("failed %s %s: %s\n%s", sig.name, sig.uuid, error, event.traceback.rstrip(), extra=extra)
    else:
        task_log.error("failed %s %s: %s", sig.name, sig.uuid, error, extra=extra)


def _with_class(event: TaskEvent) -> str:
    """The stored error string (Go's ``err.Error()``, the bare message) with the exception's
    class in front, for the log line: ``ValueError: nope``."""
    exc = event.exc
    if exc is None or event.error == type(exc).__name__:
        return event.error
    return f"{type(exc).__name__}: {event.error}"


@hookimpl
def machinery_task_retried(event: TaskEvent) -> None:
    """Log at WARNING with the delay and retries left."""
    sig = event.signature
    task_log.warning(
        "retrying %s %s in %gs (%d retries left): %s",
        sig.name,
        sig.uuid,
        event.retry_in,
        sig.retry_count,
        _with_class(event),
        extra=_extra(event, "RETRY"),
    )


@hookimpl
def machinery_worker_started(event: WorkerEvent) -> None:
    """Log at INFO with the redacted URLs and registered tasks."""
    worker_log.info(
        "worker %s ready: queue=%s concurrency=%d broker=%s backend=%s tasks=%s",
        event.consumer_tag,
        event.queue,
        event.concurrency,
        event.broker,
        event.backend,
        ", ".join(event.tasks) or "(none)",
    )


@hookimpl
def machinery_worker_stopped(event: WorkerEvent) -> None:
    """Log at INFO."""
    worker_log.info("worker %s stopped", event.consumer_tag)
