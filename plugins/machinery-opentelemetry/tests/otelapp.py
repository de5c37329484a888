"""The app of the tracing tests: a tracer provider exporting each ended span as one JSON line to
``$MACHINERY_TEST_SPANS`` (an SDK exporter, as a user's app would configure one)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from machinery import Config, Server, TaskContext


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per span (one write per line, O_APPEND: processes can share it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for s in spans:
            ctx = s.get_span_context()
            line = {
                "name": s.name,
                "kind": s.kind.name,
                "trace_id": f"{ctx.trace_id:032x}",
                "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
                "attributes": dict(s.attributes or {}),
                "status": s.status.status_code.name,
                "pid": os.getpid(),
            }
            with self.lock, open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, default=str) + "\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider(resource=Resource.create({"service.name": "otel-test"}))
provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["MACHINERY_TEST_SPANS"])))
trace.set_tracer_provider(provider)

server = Server(Config.from_env())


@server.task("add")
def add(*n: int) -> int:
    return sum(n)


@server.task("fail")
def fail() -> None:
    raise ValueError("nope")


@server.task("headers")
def headers(ctx: TaskContext) -> list[str]:
    return sorted(ctx.signature.headers)
