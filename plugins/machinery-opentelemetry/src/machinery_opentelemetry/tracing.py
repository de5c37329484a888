"""Spans for sends and task runs.

- **send** (kind PRODUCER): started by ``machinery_before_publish`` as a child of the current
  context, ended by ``machinery_after_publish``. Its context is injected into
  ``Signature.Headers`` with the *global propagator*: W3C ``traceparent`` by default,
  or whatever ``OTEL_PROPAGATORS`` names (``b3``, ``b3multi``, ``jaeger``... when the
  propagator's package is installed), so the message carries it to the worker.
- **run** (kind CONSUMER): started by ``machinery_task_started`` as a child of the context
  extracted from the headers, made current in the task's thread (so spans the task makes, and
  the follow-ups the worker sends for it, are its children), ended when the attempt ends.

A chain's next step, a chord's callback and a retry are sent by the worker while the run span
of the task that triggers them is current, so a whole workflow is one trace.

Attributes follow the messaging semantic conventions (``messaging.system``,
``messaging.operation.type``, ``messaging.destination.name``,
``messaging.message.id``: the task UUID) plus ``machinery.task.name``,
``machinery.task.retry_count``, ``machinery.task.state``, ``machinery.group.uuid`` and, on a run,
``machinery.worker``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from machinery import __version__

if TYPE_CHECKING:
    from machinery.plugin import Signature, TaskEvent

__all__ = ["after_publish", "before_publish", "task_ended", "task_started"]

SYSTEM = "machinery"

_tracer: Any = None
_sends: dict[int, Any] = {}
_runs: dict[str, Any] = {}
_local = threading.local()


def tracer() -> trace.Tracer:
    """The plugin's tracer (from the global tracer provider at first use)."""
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer("machinery_opentelemetry", __version__)
    return _tracer  # type: ignore[no-any-return]


def _attributes(sig: Signature, operation: str) -> dict[str, Any]:
    # Every attribute costs the SDK a validation and a locked insert per span (about 2 µs), so
    # no value is written twice: ``messaging.message.id`` is the task UUID.
    attrs: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.message.id": sig.uuid,
        "machinery.task.name": sig.name,
        "machinery.task.retry_count": sig.retry_count,
    }
    if sig.routing_key:
        attrs["messaging.destination.name"] = sig.routing_key
    if sig.group_uuid:
        attrs["machinery.group.uuid"] = sig.group_uuid
    return attrs


class _Carrier:
    """Reads and writes ``Signature.Headers`` for the propagators (Go reads them as
    ``map[string]interface{}``): string values only, without copying the headers."""

    @staticmethod
    def set(headers: dict[str, Any], key: str, value: str) -> None:
        headers[key] = value

    @staticmethod
    def get(headers: dict[str, Any], key: str) -> list[str] | None:
        value = headers.get(key)
        return [value] if isinstance(value, str) else None

    @staticmethod
    def keys(headers: dict[str, Any]) -> list[str]:
        return [k for k, v in headers.items() if isinstance(v, str)]


_CARRIER = _Carrier()


def before_publish(sig: Signature) -> None:
    """Start the send span and put its context into the headers."""
    span = tracer().start_span(f"send {sig.name}", kind=SpanKind.PRODUCER, attributes=_attributes(sig, "send"))
    textmap = propagate.get_global_textmap()
    # Go's opentracing carrier (and some propagators) want plain strings; drop a stale context
    # from an earlier hop (a retried or re-sent signature) before injecting the new one.
    headers = sig.headers
    for key in textmap.fields:
        headers.pop(key, None)
    textmap.inject(headers, context=trace.set_span_in_context(span), setter=_CARRIER)  # type: ignore[arg-type]
    _sends[id(sig)] = (span, sig.routing_key)


def after_publish(sig: Signature, error: BaseException | None) -> None:
    """End the send span."""
    entry = _sends.pop(id(sig), None)
    if entry is None:
        return
    span, routing_key = entry
    if sig.routing_key and sig.routing_key != routing_key:
        # the broker chose the queue after the span started (``adjust_routing_key``)
        span.set_attribute("messaging.destination.name", sig.routing_key)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def task_started(event: TaskEvent) -> None:
    """Start the run span as a child of the sender's context and make it current here."""
    sig = event.signature
    parent = propagate.get_global_textmap().extract(sig.headers, getter=_CARRIER)  # type: ignore[arg-type]
    attrs = _attributes(sig, "process")
    attrs["machinery.worker"] = event.consumer_tag
    span = tracer().start_span(f"run {sig.name}", context=parent, kind=SpanKind.CONSUMER, attributes=attrs)
    # what the end hook compares with: only a changed retry count is written again there
    _runs[sig.uuid] = (span, sig.retry_count)
    # The previous task of this thread stays current until the next one starts, so the
    # follow-ups its worker sends after the end hook (chain steps, chord callbacks) are its
    # children; it is replaced here.
    token = getattr(_local, "token", None)
    if token is not None:
        otel_context.detach(token)
    _local.token = otel_context.attach(trace.set_span_in_context(span))


def task_ended(event: TaskEvent, state: str) -> None:
    """End the run span (possibly from another thread: a backend that confirms writes later).

    This runs on the worker's critical path (a backend that batches writes calls it from the
    thread that sends the next batch), so a success costs one attribute and the end only.
    """
    sig = event.signature
    entry = _runs.pop(sig.uuid, None)
    if entry is None:
        return
    span, retry_count = entry
    if state == "SUCCESS":
        span.set_attribute("machinery.task.state", state)
        span.end()
        return
    attrs: dict[str, Any] = {"machinery.task.state": state}
    if sig.retry_count != retry_count:
        attrs["machinery.task.retry_count"] = sig.retry_count
    if state == "RETRY":
        attrs["machinery.task.retry_in"] = event.retry_in
    span.set_attributes(attrs)
    if event.exc is not None:
        span.record_exception(event.exc)
    if state == "FAILURE":
        span.set_status(Status(StatusCode.ERROR, event.error))
    span.end()
