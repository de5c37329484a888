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

import os
import re
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from machinery import __version__

if TYPE_CHECKING:
    from machinery.plugin import Signature, TaskEvent

__all__ = ["after_publish", "before_publish", "task_ended", "task_started"]

SYSTEM = "machinery"

_tracer: Any = None
#: ``MACHINERY_OTEL_LIGHT_SPANS=0``: always the SDK's own spans (see :mod:`machinery_opentelemetry.light`)
LIGHT_SPANS = os.environ.get("MACHINERY_OTEL_LIGHT_SPANS", "1").strip().lower() not in ("0", "false", "no", "off")
_light: Any = None
_EMPTY = otel_context.Context()
_sends: dict[int, Any] = {}
_runs: dict[str, Any] = {}


def tracer() -> trace.Tracer:
    """The plugin's tracer (from the global tracer provider at first use)."""
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer("machinery_opentelemetry", __version__)
    return _tracer  # type: ignore[no-any-return]


def _start(
    name: str,
    kind: SpanKind,
    attributes: dict[str, Any],
    context: otel_context.Context | None = None,
    parent: SpanContext | None = None,
) -> trace.Span:
    """``tracer().start_span(...)``: a light span where the tracer is the SDK's and nothing needs
    the SDK's own span (:func:`machinery_opentelemetry.light.pipeline_for`). ``parent``, when
    given, is the remote parent read from a message (``context`` is then ignored)."""
    global _light
    tr = _tracer or tracer()
    if _light is None:
        real = getattr(tr, "_tracer", tr) if type(tr) is trace.ProxyTracer else tr
        if LIGHT_SPANS and type(real).__module__ == "opentelemetry.sdk.trace":
            from machinery_opentelemetry import light

            _light = light
    pipe = _light.pipeline_for(tr) if _light is not None else None
    if pipe is not None:
        if parent is not None:
            return pipe.start(name, kind, attributes, None, parent)  # type: ignore[no-any-return]
        return pipe.start(name, kind, attributes, context)  # type: ignore[no-any-return]
    if parent is not None:
        context = trace.set_span_in_context(NonRecordingSpan(parent), _EMPTY)
    return tr.start_span(name, context=context, kind=kind, attributes=attributes)


def _set_own(span: trace.Span, attributes: dict[str, Any]) -> None:
    # the plugin's own attributes are valid: a light span need not validate them again
    getattr(span, "set_own_attributes", span.set_attributes)(attributes)


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
    span = _start(f"send {sig.name}", SpanKind.PRODUCER, _attributes(sig, "send"))
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
        _set_own(span, {"messaging.destination.name": sig.routing_key})
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


# The W3C ``traceparent`` that OpenTelemetry's own propagator writes (version 00, no extra field),
# read by ``_sender``; anything else goes through the global propagator.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_FLAGS = {f"{i:02x}": TraceFlags(i) for i in range(256)}
_W3C_DEFAULT = (TraceContextTextMapPropagator, W3CBaggagePropagator)
#: (the global propagator last looked at, whether it is the default W3C one): one tuple, so
#: threads never see the verdict of one propagator paired with another
_checked: tuple[Any, bool] = (None, False)


def _sender(headers: dict[str, Any]) -> tuple[otel_context.Context | None, SpanContext | None]:
    """The sender's context from ``headers``: ``(None, its span context)`` when that is all it
    holds, else ``(the context the global propagator's extract returns, None)``.

    With the default propagator (W3C trace context then baggage: ``OTEL_PROPAGATORS`` unset), a
    message that carries a version-00 ``traceparent`` and no ``tracestate`` or ``baggage`` (what
    this plugin's producers send when no baggage is set) is parsed here, with the checks that
    :class:`TraceContextTextMapPropagator` makes, into the same context, in less than half its
    time; everything else is the propagator's own ``extract``.
    """
    global _checked
    textmap = propagate.get_global_textmap()
    checked, fast = _checked
    if textmap is not checked:  # ``set_global_textmap`` may replace it at any time
        props = getattr(textmap, "_propagators", None)
        fast = isinstance(textmap, CompositePropagator) and tuple(map(type, props or ())) == _W3C_DEFAULT
        _checked = (textmap, fast)
    if fast:
        parent = headers.get("traceparent")
        if type(parent) is str and "tracestate" not in headers and "baggage" not in headers:
            match = _TRACEPARENT.fullmatch(parent)
            if match is not None:
                trace_id, span_id, flags = match.groups()
                span_context = SpanContext(int(trace_id, 16), int(span_id, 16), True, _FLAGS[flags])
                if span_context.is_valid:
                    return None, span_context
            # anything else (all-zero ids, another version, spaces...): the propagator decides
    return textmap.extract(headers, getter=_CARRIER), None  # type: ignore[arg-type]


def task_started(event: TaskEvent) -> None:
    """Start the run span as a child of the sender's context and make it current here."""
    sig = event.signature
    retry_count = sig.retry_count
    # all attributes in the one ``start_span`` call: each later ``set_attribute`` takes the
    # span's lock and validates again
    attrs: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.message.id": sig.uuid,
        "machinery.task.name": sig.name,
        "machinery.task.retry_count": retry_count,
        "machinery.worker": event.consumer_tag,
    }
    if sig.routing_key:
        attrs["messaging.destination.name"] = sig.routing_key
    if sig.group_uuid:
        attrs["machinery.group.uuid"] = sig.group_uuid
    context, parent = _sender(sig.headers)
    span = _start(f"run {sig.name}", SpanKind.CONSUMER, attrs, context, parent)
    # what the end hook compares with: only a changed retry count is written again there
    _runs[sig.uuid] = (span, retry_count)
    # Current in this thread from here on, in the sender's context (its baggage, say), without a
    # detach: the previous task of this thread stayed current until now, so the follow-ups its
    # worker sent after the end hook (chain steps, chord callbacks) were its children; it is
    # simply replaced.
    otel_context.attach(trace.set_span_in_context(span, context or _EMPTY))


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
        _set_own(span, {"machinery.task.state": state})
        span.end()
        return
    attrs: dict[str, Any] = {"machinery.task.state": state}
    if sig.retry_count != retry_count:
        attrs["machinery.task.retry_count"] = sig.retry_count
    if state == "RETRY":
        attrs["machinery.task.retry_in"] = event.retry_in
    _set_own(span, attrs)
    if event.exc is not None:
        span.record_exception(event.exc)
    if state == "FAILURE":
        span.set_status(Status(StatusCode.ERROR, event.error))
    span.end()
