"""The worker's quick read of a W3C ``traceparent`` (``tracing._sender``) gives the
context that the global propagator's own ``extract`` gives, and is taken only where it may be."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from machinery_opentelemetry import tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"

HEADERS: list[dict[str, Any]] = [
    {"traceparent": f"00-{TRACE}-{SPAN}-01"},
    {"traceparent": f"00-{TRACE}-{SPAN}-00", "other": 1},
    {"traceparent": f"00-{TRACE}-{SPAN}-03"},
    {"traceparent": f"00-{'0' * 32}-{SPAN}-01"},  # invalid ids: no parent
    {"traceparent": f"00-{TRACE}-{'0' * 16}-01"},
    {"traceparent": f"00-{TRACE.upper()}-{SPAN}-01"},  # upper-case hex is not W3C
    {"traceparent": f"00-{TRACE}-{SPAN}-01-extra"},  # version 00 has no fifth field
    {"traceparent": f"01-{TRACE}-{SPAN}-01-extra"},  # a later version: its first four fields
    {"traceparent": f"ff-{TRACE}-{SPAN}-01"},
    {"traceparent": f"  00-{TRACE}-{SPAN}-01"},
    {"traceparent": f"00-{TRACE}-{SPAN}-1"},
    {"traceparent": 12},  # not a string: Go may carry other types in Signature.Headers
    {"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "vendor=x"},
    {"traceparent": f"00-{TRACE}-{SPAN}-01", "baggage": "user=alice"},
    {"baggage": "user=alice"},
    {},
]


def _parent_context(headers: dict[str, Any]) -> Any:
    """The context the worker starts a run span in: the span context ``tracing._sender`` read
    itself, as the parent of an empty context, else the context the propagator extracted."""
    context, parent = tracing._sender(headers)
    if parent is not None:
        return trace.set_span_in_context(trace.NonRecordingSpan(parent), Context())
    return context


def _same(a: Any, b: Any) -> None:
    ca, cb = trace.get_current_span(a).get_span_context(), trace.get_current_span(b).get_span_context()
    assert (ca.trace_id, ca.span_id, ca.is_remote, ca.trace_flags, ca.trace_state.to_header(), ca.is_valid) == (
        cb.trace_id,
        cb.span_id,
        cb.is_remote,
        cb.trace_flags,
        cb.trace_state.to_header(),
        cb.is_valid,
    )
    assert dict(baggage.get_all(a)) == dict(baggage.get_all(b))


@pytest.fixture
def counted() -> Iterator[list[int]]:
    """Counts the calls of the global propagator's ``extract`` (restored after)."""
    textmap = propagate.get_global_textmap()
    calls: list[int] = []
    real = textmap.extract

    def extract(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    textmap.extract = extract  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del textmap.extract


@pytest.mark.parametrize("headers", HEADERS, ids=[str(i) for i in range(len(HEADERS))])
def test_same_context_as_the_default_propagator(headers: dict[str, Any]) -> None:
    expected = propagate.get_global_textmap().extract(headers, getter=tracing._CARRIER)  # type: ignore[arg-type]
    _same(_parent_context(headers), expected)


def test_the_plain_traceparent_skips_the_propagator(counted: list[int]) -> None:
    ctx = _parent_context({"traceparent": f"00-{TRACE}-{SPAN}-01"})
    span_context = trace.get_current_span(ctx).get_span_context()
    assert f"{span_context.trace_id:032x}" == TRACE and span_context.is_remote and span_context.trace_flags.sampled
    assert counted == []
    _parent_context({"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "vendor=x"})
    assert counted == [1]


def test_another_propagator_is_always_asked() -> None:
    default = propagate.get_global_textmap()
    calls: list[int] = []

    class Counting(TraceContextTextMapPropagator):
        def extract(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return super().extract(*args, **kwargs)

    propagate.set_global_textmap(Counting())
    try:
        ctx = _parent_context({"traceparent": f"00-{TRACE}-{SPAN}-01"})
        assert calls == [1]
        assert f"{trace.get_current_span(ctx).get_span_context().span_id:016x}" == SPAN
    finally:
        propagate.set_global_textmap(default)
    _parent_context({})
    assert tracing._checked[0] is default
