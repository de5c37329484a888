"""The light spans (``machinery_opentelemetry.light``) export what the SDK's own spans export.

Each test runs the same sends and task runs twice, through real worker and publish hooks, once
with light spans and once with the SDK's (``MACHINERY_OTEL_LIGHT_SPANS=0``), into an SDK tracer
provider with an in-memory exporter, and compares every exported field but the ids and times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

from machinery import Signature
from machinery.events import TaskEvent
from machinery_opentelemetry import light, tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    tracing._tracer = None
    tracing.LIGHT_SPANS = True
    light._pipeline = None
    otel_context.attach(Context())


def _task(sig: Signature, body: Callable[[], None] | None, state: str = "SUCCESS") -> None:
    event = TaskEvent(signature=sig, consumer_tag="w-1")
    tracing.task_started(event)
    exc: BaseException | None = None
    if body is not None:
        try:
            body()
        except Exception as e:
            exc = e
    if exc is not None:
        state = "FAILURE"
    ended = TaskEvent(signature=sig, consumer_tag="w-1", exc=exc, error=str(exc) if exc else "")
    tracing.task_ended(ended, state)


def _run(
    use_light: bool,
    scenario: Callable[[], None],
    *,
    sampler: sampling.Sampler | None = None,
    limits: SpanLimits | None = None,
    processor: SpanProcessor | None = None,
) -> tuple[list[ReadableSpan], list[Any]]:
    """Run ``scenario`` with light or SDK spans; the exported spans and the spans that were
    current in the tasks."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=sampler,
        span_limits=limits,
        resource=Resource.create({"service.name": "light-test"}),
        id_generator=_Counting(),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if processor is not None:
        provider.add_span_processor(processor)
    tracing._tracer = provider.get_tracer("machinery_opentelemetry", "1")
    tracing.LIGHT_SPANS = use_light
    tracing._light = None
    light._pipeline = None
    current.clear()
    otel_context.attach(Context())  # what the last run left current
    scenario()
    provider.shutdown()
    return list(exporter.get_finished_spans()), list(current)


current: list[Any] = []


class _Counting(IdGenerator):
    """Ids in sequence: the light and the SDK runs make the same ids in the same order."""

    def __init__(self) -> None:
        self.n = 0

    def generate_span_id(self) -> int:
        self.n += 1
        return self.n

    def generate_trace_id(self) -> int:
        self.n += 1
        return self.n * 0x9E3779B97F4A7C15 % (1 << 128)  # spread over the range: ratio samplers use the low bits


def _view(span: ReadableSpan) -> dict[str, Any]:
    """Everything of an exported span but its times (the ids come from :class:`_Counting`, so
    both runs make the same ones)."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "ids": (ctx.trace_id, ctx.span_id, span.parent.span_id if span.parent else None),
        "name": span.name,
        "kind": span.kind,
        "trace_flags": ctx.trace_flags,
        "trace_state": ctx.trace_state.to_header(),
        "remote_parent": span.parent.is_remote if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "dropped_attributes": span.dropped_attributes,
        "events": [(e.name, dict(e.attributes or {})) for e in span.events],
        "links": [(link.context.span_id, dict(link.attributes or {})) for link in span.links],
        "status": (span.status.status_code, span.status.description),
        "resource": dict(span.resource.attributes),
        "scope": (span.instrumentation_scope.name, span.instrumentation_scope.version)
        if span.instrumentation_scope
        else None,
        "timed": bool(span.start_time and span.end_time and span.start_time <= span.end_time),
    }


def _same(scenario: Callable[[], None], **kw: Any) -> list[ReadableSpan]:
    light_spans, light_current = _run(True, scenario, **kw)
    sdk_spans, sdk_current = _run(False, scenario, **kw)
    assert [_view(s) for s in light_spans] == [_view(s) for s in sdk_spans]
    assert [s.get_span_context() for s in light_current] == [s.get_span_context() for s in sdk_current]
    return light_spans


def _workflow() -> None:
    """A send, a task that adds to its span and sends a follow-up, that follow-up's run, a task
    run from a plain ``traceparent`` and one with a ``tracestate``, a failing task."""
    first = Signature("add", routing_key="qa", group_uuid="g-1")
    tracing.before_publish(first)
    tracing.after_publish(first, None)

    def body() -> None:
        span = trace.get_current_span()
        current.append(span)
        span.set_attribute("order.id", 7)
        span.set_attributes({"order.lines": [1, 2], "bad": object()})  # type: ignore[dict-item]
        span.add_event("checked", {"ok": True})
        span.add_link(trace.SpanContext(int(TRACE, 16), int(PARENT, 16), True), {"why": "test"})
        span.set_status(trace.Status(trace.StatusCode.OK))
        span.set_status(trace.StatusCode.ERROR, "ignored: OK is final")
        nxt = Signature("next", routing_key="qb")
        tracing.before_publish(nxt)
        tracing.after_publish(nxt, None)
        follow.append(nxt)

    follow: list[Signature] = []
    _task(first, body)
    _task(follow[0], None)
    _task(Signature("w3c", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}), None)
    _task(Signature("state", headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "v=1"}), None)

    def boom() -> None:
        current.append(trace.get_current_span())
        raise ValueError("boom")

    _task(Signature("fail", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}), boom)
    retried = Signature("again", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    event = TaskEvent(signature=retried, consumer_tag="w-1")
    tracing.task_started(event)
    retried.retry_count = 1
    tracing.task_ended(TaskEvent(signature=retried, consumer_tag="w-1", retry_in=2.5, error="later"), "RETRY")


def test_the_same_spans_as_the_sdk() -> None:
    spans = _same(_workflow)
    by_name = {s.name: s for s in spans}
    assert set(by_name) >= {"send add", "run add", "send next", "run next", "run w3c", "run fail", "run again"}
    run = by_name["run add"]
    assert run.attributes["order.id"] == 7 and run.attributes["order.lines"] == (1, 2)  # type: ignore[index]
    assert run.status.status_code is trace.StatusCode.OK
    assert [e.name for e in by_name["run fail"].events] == ["exception"]
    assert by_name["run again"].attributes["machinery.task.retry_in"] == 2.5  # type: ignore[index]
    # one trace from the first send: send -> run -> send -> run
    chain = [by_name[n] for n in ("send add", "run add", "send next", "run next")]
    assert len({s.context.trace_id for s in chain}) == 1
    assert [s.parent.span_id for s in chain[1:]] == [s.context.span_id for s in chain[:-1]]  # type: ignore[union-attr]


def test_the_task_sees_a_light_span_and_the_sdk_path_an_sdk_span() -> None:
    _, light_current = _run(True, _workflow)
    _, sdk_current = _run(False, _workflow)
    assert all(isinstance(s, light.LightSpan) for s in light_current)
    assert all(isinstance(s, Span) for s in sdk_current)


def test_span_limits_apply_the_same() -> None:
    limits = SpanLimits(max_span_attributes=4, max_attribute_length=3, max_events=1, max_links=0)
    spans = _same(_workflow, limits=limits)
    assert any(s.dropped_attributes for s in spans)
    assert all(len(str(v)) <= 3 for s in spans for v in s.attributes.values() if isinstance(v, str))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "sampler",
    [sampling.ALWAYS_OFF, sampling.ALWAYS_ON, sampling.DEFAULT_OFF, sampling.TraceIdRatioBased(0.5)],
    ids=["always_off", "always_on", "parentbased_always_off", "ratio"],
)
def test_the_sampler_decides_the_same(sampler: sampling.Sampler) -> None:
    _same(_workflow, sampler=sampler)


def test_a_parent_not_sampled_is_followed() -> None:
    def scenario() -> None:
        quiet = Signature("quiet", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"})
        _task(quiet, lambda: current.append(trace.get_current_span()))

    light_spans, light_current = _run(True, scenario)
    assert light_spans == [] and not light_current[0].is_recording()
    assert light_current[0].get_span_context().trace_id == int(TRACE, 16)


class _Starts(SpanProcessor):
    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:  # type: ignore[override]
        self.started.append(span.name)
        span.set_attribute("seen.on_start", True)


def test_a_processor_that_sees_spans_start_gets_the_sdk_spans() -> None:
    starts = _Starts()
    spans, cur = _run(True, _workflow, processor=starts)
    assert "run add" in starts.started and all(isinstance(s, Span) for s in cur)
    assert all(s.attributes.get("seen.on_start") for s in spans)  # type: ignore[union-attr]


def test_the_quiet_processors_are_quiet_on_this_sdk() -> None:
    """Light spans skip ``on_start`` and ``_on_ending`` of these processors: they must do nothing
    on the installed SDK (checked by calling them with a span that fails on any use)."""

    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the processor used span.{name}")

    exporter = InMemorySpanExporter()
    for processor in (SpanProcessor(), SimpleSpanProcessor(exporter), BatchSpanProcessor(exporter)):
        processor.on_start(Untouchable())  # type: ignore[arg-type]
        getattr(processor, "_on_ending", lambda span: None)(Untouchable())
        processor.shutdown()
    assert exporter.get_finished_spans() == ()


def test_the_light_spans_can_be_turned_off() -> None:
    _, cur = _run(False, _workflow)
    assert not any(isinstance(s, light.LightSpan) for s in cur)


def test_a_light_span_ended_is_frozen(caplog: pytest.LogCaptureFixture) -> None:
    def scenario() -> None:
        _task(Signature("t"), lambda: current.append(trace.get_current_span()))
        span = current[0]
        span.set_attribute("late", 1)
        span.add_event("late")
        span.update_name("renamed")
        span.end()

    spans, _ = _run(True, scenario)
    assert [s.name for s in spans] == ["run t"] and "late" not in spans[0].attributes  # type: ignore[operator]
    assert "on an ended span" in caplog.text


@pytest.mark.parametrize("use_light", [True, False], ids=["light", "sdk"])
def test_the_senders_baggage_is_current_in_the_task(use_light: bool) -> None:
    from opentelemetry import baggage

    seen: list[Any] = []

    def scenario() -> None:
        sig = Signature("b", headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "baggage": "user=alice"})
        _task(sig, lambda: seen.append((baggage.get_all(), trace.get_current_span().get_span_context())))

    spans, _ = _run(use_light, scenario)
    (values, ctx), = seen
    assert dict(values) == {"user": "alice"}
    assert ctx.trace_id == int(TRACE, 16) and spans[0].parent.span_id == int(PARENT, 16)  # type: ignore[union-attr]
