"""Spans for the OpenTelemetry SDK's own tracer, made for a fraction of the SDK span's cost.

A worker makes one span per task run, and an empty task costs the worker about 100 µs. The SDK's
``Tracer.start_span`` plus ``Span.end`` cost about 30 µs alone (a lock, attribute validation at
every ``set_attribute``, bounded lists, a processor call at the start and two at the end), so a
traced worker drained empty tasks at 60-70 % of the rate of an untraced one. :class:`LightSpan`
keeps what a span must keep in plain fields and gives the tracer provider's span processors, at
the end, the same :class:`~opentelemetry.sdk.trace.ReadableSpan` that the SDK's span gives them.
What is the same as an SDK span:

- the tracer's sampler decides (``should_sample`` with the same arguments), the tracer's id
  generator makes the ids, and the trace flags, trace state, resource and instrumentation scope
  are the SDK's;
- the span limits apply: attributes, events and links are bounded and validated with the SDK's
  own classes when the span is ended (the attributes this plugin sets itself are strings and
  integers, so a span nobody else touched skips that step unless an attribute length limit is
  set);
- the API a task sees on ``trace.get_current_span()``: attributes, events, links, exceptions,
  status (``OK`` is final, ``UNSET`` is ignored), a new name; nothing changes after the end.

It is used only where that is all the SDK would do (:func:`pipeline_for`): the tracer is the
SDK's ``Tracer`` (of the SDK versions whose structure this module knows), its internal metrics
are off, and every span processor has the no-op ``on_start`` and ``_on_ending`` of the SDK's
base, batch and simple processors, since those are given the mutable span. A processor that
looks at spans as they start (a baggage processor, say) gets the SDK's own spans.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, SynchronousMultiSpanProcessor, Tracer, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

__all__ = ["LightSpan", "Pipeline", "pipeline_for"]

log = logging.getLogger("machinery.opentelemetry")

#: The processors whose ``on_start``/``_on_ending`` do nothing (checked again by the tests on the
#: installed SDK).
_QUIET_PROCESSORS = (SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor)
_QUIET_HOOKS = frozenset(
    getattr(cls, hook) for cls in _QUIET_PROCESSORS for hook in ("on_start", "_on_ending") if hasattr(cls, hook)
)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
#: (SDK 1.39+) a trace id the id generator made at random is flagged as such
_RANDOM_FLAG: int = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
_UNSET = Status(StatusCode.UNSET)
_EMPTY = otel_context.Context()
#: ``Pipeline.start``'s default: the parent is the span of ``context``
_FROM_CONTEXT = object()


def _quiet(processor: object) -> bool:
    kind = type(processor)
    return all(getattr(kind, hook, None) in _QUIET_HOOKS for hook in ("on_start", "_on_ending") if hasattr(kind, hook))


class Pipeline:
    """What an SDK tracer hands a span to: its sampler, id generator, limits, resource, scope and
    span processors, read once from the tracer (:func:`pipeline_for` checks they still hold)."""

    def __init__(self, tracer: Any, processors: tuple[Any, ...]) -> None:
        self.tracer = tracer
        self.processors = processors
        self.sampler = tracer.sampler
        self.ids = tracer.id_generator
        # one processor (the usual): its own ``on_end``, without the loop over one
        self.on_end = processors[0].on_end if len(processors) == 1 else tracer.span_processor.on_end
        self.limits = tracer._span_limits
        self.scope = tracer._instrumentation_scope
        self.info = tracer.instrumentation_info
        #: the SDK's default sampler, whose decision needs no call: the parent's, else sampled
        self.default_sampler = self.sampler is sampling.DEFAULT_ON
        # attributes are validated at the end only when something could make them change
        self.bounded = self.limits.max_span_attribute_length is not None

    def start(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        context: otel_context.Context | None = None,
        parent: SpanContext | object | None = _FROM_CONTEXT,
    ) -> trace.Span:
        """Start a span as ``tracer.start_span(name, context, kind, attributes)`` would.

        :param parent: the parent's span context when the caller has it (a remote parent read
            from a message), instead of ``context``.
        """
        ids = self.ids
        default = self.default_sampler
        if parent is _FROM_CONTEXT:
            parent = trace.get_current_span(context).get_span_context()
        elif context is None and parent is not None and not default:
            context = trace.set_span_in_context(NonRecordingSpan(parent), _EMPTY)  # type: ignore[arg-type]
        if not self.tracer._is_enabled():
            return NonRecordingSpan(parent)  # type: ignore[arg-type]
        if parent is None or not parent.is_valid:  # type: ignore[attr-defined]
            parent = None
            trace_id = ids.generate_trace_id()
            random_id = ids.is_trace_id_random() if _RANDOM_FLAG else False
            parent_flags = _SAMPLED
            trace_state = None
        else:
            # a SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, trace_state, ...)
            trace_id, _, _, parent_flags, trace_state = parent[:5]  # type: ignore[index]
            random_id = parent_flags.random_trace_id if _RANDOM_FLAG else False
        if default:
            # ``ParentBased(ALWAYS_ON)``, the SDK's default: the parent's decision, else sampled;
            # the parent's trace state
            sampled = recording = parent_flags.sampled
        else:
            result = self.sampler.should_sample(context, trace_id, name, kind, attributes, ())
            sampled, recording = result.decision.is_sampled(), result.decision.is_recording()
            trace_state = result.trace_state
            attributes = dict(result.attributes)
        flags = _SAMPLED if sampled else _NOT_SAMPLED
        if random_id:
            flags = TraceFlags(flags | _RANDOM_FLAG)
        span_context = SpanContext(trace_id, ids.generate_span_id(), False, flags, trace_state)
        if not recording:
            return NonRecordingSpan(span_context)
        return LightSpan(self, name, span_context, parent, kind, attributes)  # type: ignore[arg-type]

    def end(self, span: LightSpan) -> None:
        """Hand the ended span to the span processors as the read-only span the SDK's span makes."""
        limits = self.limits
        attributes: Any = span._attributes
        most = limits.max_span_attributes
        if span._touched or self.bounded or (most is not None and len(attributes) > most):
            attributes = BoundedAttributes(
                most, attributes, immutable=True, max_value_len=limits.max_span_attribute_length
            )
        events: Sequence[Event] = BoundedList.from_seq(limits.max_events, span._events) if span._events else ()
        links: Sequence[Link] = BoundedList.from_seq(limits.max_links, span._links) if span._links else ()
        self.on_end(
            ReadableSpan(
                span._name, span._context, span._parent, self.tracer.resource, attributes, events, links,
                span._kind, self.info, span._status, span._start_time, span._end_time, self.scope,
            )
        )


_pipeline: Pipeline | None = None


def pipeline_for(tracer: Any) -> Pipeline | None:
    """The light pipeline of ``tracer``, or None where its spans must be the SDK's own."""
    global _pipeline
    real = getattr(tracer, "_tracer", tracer) if type(tracer) is trace.ProxyTracer else tracer
    if type(real) is not Tracer:
        return None
    processor = real.span_processor
    processors = getattr(processor, "_span_processors", None)
    pipe = _pipeline
    if pipe is not None and pipe.tracer is real and pipe.processors is processors:
        return pipe
    if (
        type(processor) is not SynchronousMultiSpanProcessor
        or processors is None
        or not all(map(_quiet, processors))
        or type(getattr(real, "_tracer_metrics", None)).__name__ != "NoOpTracerMetrics"
        or not all(hasattr(real, a) for a in ("_is_enabled", "_span_limits", "_instrumentation_scope"))
    ):
        return None
    pipe = _pipeline = Pipeline(real, processors)
    return pipe


class LightSpan(trace.Span):
    """A recording span whose fields are plain Python until it ends (see the module's text).

    Like the SDK's span, it may be changed from any thread until it ends; the worker ends it.
    """

    __slots__ = (
        "_attributes", "_context", "_end_time", "_events", "_kind", "_links", "_name", "_parent",
        "_pipe", "_start_time", "_status", "_touched",
    )

    def __init__(
        self,
        pipe: Pipeline,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
    ) -> None:
        self._pipe = pipe
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._events: list[Event] = []
        self._links: list[Link] = []
        self._status = _UNSET
        self._touched = False
        self._end_time: int | None = None
        self._start_time = time_ns()

    def __repr__(self) -> str:
        return f'LightSpan(name="{self._name}", context={self._context})'

    def _ended(self, what: str) -> bool:
        if self._end_time is None:
            return False
        log.warning("Tried calling %s on an ended span.", what)
        return True

    def get_span_context(self) -> SpanContext:
        """The span's context."""
        return self._context

    def is_recording(self) -> bool:
        """True until the span ends."""
        return self._end_time is None

    def set_own_attributes(self, attributes: Mapping[str, str | bool | int | float]) -> None:
        """Set attributes that the caller knows to be valid (strings, booleans, integers, floats):
        unlike :meth:`set_attributes`, they are not validated again at the end."""
        if not self._ended("set_attributes"):
            self._attributes.update(attributes)

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        """Set one attribute (validated against the span limits when the span ends)."""
        if not self._ended("set_attribute"):
            self._touched = True
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        """Set several attributes."""
        if not self._ended("set_attributes"):
            self._touched = True
            self._attributes.update(attributes)

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        """Add an event (its attributes bounded as the SDK bounds them)."""
        if self._ended("add_event"):
            return
        limits = self._pipe.limits
        bounded = BoundedAttributes(limits.max_event_attributes, attributes, max_value_len=limits.max_attribute_length)
        self._events.append(Event(name=name, attributes=bounded, timestamp=timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        """Add a link to another span (ignored, as by the SDK, when it names no valid span)."""
        if not (context and (context.is_valid or attributes or context.trace_state)) or self._ended("add_link"):
            return
        limits = self._pipe.limits
        bounded = BoundedAttributes(
            limits.max_link_attributes, attributes, max_value_len=limits.max_attribute_length, immutable=True
        )
        self._links.append(Link(context=context, attributes=bounded))

    def update_name(self, name: str) -> None:
        """Rename the span."""
        if not self._ended("update_name"):
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """Set the status: ``UNSET`` is ignored and ``OK`` is final, as in the SDK."""
        if self._ended("set_status") or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                log.warning("Description %s ignored. Use either `Status` or `(StatusCode, Description)`", description)
            self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Record an exception as an ``exception`` event, with the SDK's attributes."""
        kind = type(exception)
        module = kind.__module__
        attrs: dict[str, types.AttributeValue] = {
            "exception.type": f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(kind, exception, exception.__traceback__)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            attrs.update(attributes)
        self.add_event("exception", attrs, timestamp)

    def end(self, end_time: int | None = None) -> None:
        """End the span and hand it to the span processors (once)."""
        if self._ended("end"):
            return
        self._end_time = end_time if end_time is not None else time_ns()
        self._pipe.end(self)
