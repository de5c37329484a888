"""machinery: the app its worker CLI loads, and the producer-side operations.

Worker: ``python -m machinery worker --app bench_machinery:server -c 8`` (threads). The broker,
result backend and queue come from ``BENCH_BROKER``, ``BENCH_BACKEND`` (``memory://`` for "results
off": states stay in the worker process, nothing is written to a store) and ``BENCH_QUEUE``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone

import probe

from machinery import Config, Group, Server, Signature
from machinery.signature import encode_signature, new_uuid

NAME = "machinery"
DIST = "machinery-core"
IMPORT = "machinery"
ASYNC = False


def _config() -> Config:
    options = json.loads(os.environ.get("BENCH_OPTIONS", "{}") or "{}")
    return Config(
        broker=os.environ.get("BENCH_BROKER", ""),
        result_backend=os.environ.get("BENCH_BACKEND", ""),
        default_queue=os.environ.get("BENCH_QUEUE", "machinery_tasks"),
        transport_options=options,
    )


def _otel_sdk() -> None:
    # BENCH_OTEL_SDK=1 (the machinery-otel variant): a real SDK tracer provider with a batching
    # processor and an exporter that drops the spans, so span creation, context propagation
    # and batching are measured, not the cost of a collector.
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


if os.environ.get("BENCH_OTEL_SDK") == "1":
    _otel_sdk()
server = Server(_config())
server.register_tasks({"count": probe.count, "echo": probe.noop, "eta": probe.eta})
server.register_tasks({"count_shared": probe.count_shared, "cpu": probe.cpu, "sleep_count": probe.sleep_count})
#: The drained task: ``count`` (default), ``sleep_count`` (the I/O-bound one, 10 ms), ``count_shared``
#: or ``cpu`` (the pool variants, two worker processes).
TASK = os.environ.get("BENCH_TASK", "") or "count"


def worker_cmd(python: str, results: bool) -> list[str]:
    """The worker command line (its environment carries the URLs)."""
    pool = os.environ.get("BENCH_POOL", "")  # the pool variants: threads or processes, -c BENCH_CONCURRENCY
    concurrency = os.environ.get("BENCH_CONCURRENCY", "") or "8"
    extra = ["--pool", pool] if pool else []
    if os.environ.get("BENCH_CPU_AFFINITY"):  # the sweep's machinery-affinity system
        extra += ["--cpu-affinity", os.environ["BENCH_CPU_AFFINITY"]]
    return [
        python, "-m", "machinery", "worker", "--app", "bench_machinery:server", "-c", concurrency, *extra,
        "--loglevel", "warning",
    ]  # fmt: skip


_POOL = os.environ.get("BENCH_POOL", "")
_CONCURRENCY = os.environ.get("BENCH_CONCURRENCY", "") or "8"
if _POOL == "processes":
    WORKER_NOTE = f"`machinery worker -c {_CONCURRENCY} --pool processes` ({_CONCURRENCY} spawned child processes)"
elif _POOL:
    WORKER_NOTE = f"`machinery worker -c {_CONCURRENCY} --pool {_POOL}` ({_CONCURRENCY} task threads, one process)"
else:
    WORKER_NOTE = f"`machinery worker -c {_CONCURRENCY}` ({_CONCURRENCY} task threads, one process)"
if os.environ.get("BENCH_CPU_AFFINITY"):
    WORKER_NOTE += f", `--cpu-affinity {os.environ['BENCH_CPU_AFFINITY']}` (its threads kept on one CPU)"
if os.environ.get("BENCH_OTEL_SDK") == "1":
    WORKER_NOTE += (
        "; tracing on in the producer and the worker: opentelemetry-sdk `TracerProvider` with its default "
        "sampler (`ParentBased(ALWAYS_ON)`: every span recorded) and a `BatchSpanProcessor` (defaults: "
        "queue 2048, batches of 512, 5 s delay) feeding an exporter that drops the batches, so span "
        "creation, attributes, W3C `traceparent` injection/extraction and batching are measured, "
        "serialising and sending to a collector (done on the processor's own thread) are not; every "
        "message carries its send span's `traceparent`"
    )
elif os.environ.get("MACHINERY_METRICS_PORT") is not None:
    WORKER_NOTE += (
        "; metrics on: machinery-prometheus serving `/metrics` on a free port (`MACHINERY_METRICS_PORT=0`, "
        "the default single-process registry, not scraped during the drain); every message carries the "
        "producer's publish-time header, so the queue-latency histogram is observed for each task"
    )


class Client:
    """Producer-side operations, one call per task."""

    def __init__(self, results: bool) -> None:
        self.server = server

    def enqueue(self, i: int) -> None:
        self.server.send_task(Signature(TASK, args=[i]))

    def prefill(self, n: int) -> None:
        """The drain's backlog: the same messages as :meth:`enqueue`, written in bulk (with the
        publish hooks of the enabled plugins, as ``send_task`` runs them: an observability
        variant's worker gets the headers its producers would have set, a trace context or a
        publish time)."""
        sigs = [Signature(TASK, args=[i], uuid=new_uuid("task_")) for i in range(n)]
        plugins = self.server.plugins if self.server.plugins.has_publish_observers() else None
        for start in range(0, n, 1000):
            chunk = sigs[start : start + 1000]
            self.server.backend.set_states_pending(chunk)
            items = []
            for sig in chunk:
                if plugins is not None:
                    plugins.before_publish(sig)
                self.server.broker.adjust_routing_key(sig)
                items.append((encode_signature(sig), sig))
            self.server.broker.publish_many(items)
            if plugins is not None:
                for sig in chunk:
                    plugins.after_publish(sig, None)

    def enqueue_group(self, n: int, send_concurrency: int) -> None:
        group = Group(*[Signature("count", args=[i]) for i in range(n)])
        self.server.send_group(group, send_concurrency=send_concurrency)

    def roundtrip(self, i: int) -> int:
        return int(self.server.send_task(Signature("echo", args=[i])).get(timeout=30))

    def eta(self, i: int, due: float) -> None:
        when = datetime.fromtimestamp(due, tz=timezone.utc)
        self.server.send_task(Signature("eta", args=[i, due], eta=when))

    def close(self) -> None:
        self.server.close()


if __name__ == "__main__":  # pragma: no cover - manual use
    print(server, file=sys.stderr)
