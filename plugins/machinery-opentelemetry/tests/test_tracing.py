"""Tracing across real processes: a producer process and two worker processes (one per queue),
each exporting spans as JSON lines to one file; the parent/child links are checked there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from machinery.plugins import get_plugin_host

HERE = Path(__file__).parent


def spans_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []
    logs: list[str] = []

    def go(propagators: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], list[int]]:
        logs.clear()
        spans = tmp_path / "spans.jsonl"
        db = tmp_path / "m.db"
        env = dict(os.environ, BROKER=f"sqlite:///{db}", RESULT_BACKEND=f"sqlite:///{db}")
        env["MACHINERY_TEST_SPANS"] = str(spans)
        env["MACHINERY_LOG_FORMAT"] = "json"
        env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
        if propagators:
            env["OTEL_PROPAGATORS"] = propagators
        else:
            env.pop("OTEL_PROPAGATORS", None)
        for queue in ("qa", "qb"):
            cmd = [sys.executable, "-m", "machinery", "worker", "--app", "otelapp", "-Q", queue, "-c", "2"]
            procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
        out = subprocess.run(
            [sys.executable, str(HERE / "producer.py")], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        for p in procs:
            p.terminate()
        for p in procs:
            logs.append(p.communicate(timeout=30)[1])
        time.sleep(0.1)
        return json.loads(out.stdout), spans_of(spans), [p.pid for p in procs]

    go.logs = logs  # type: ignore[attr-defined]
    yield go
    for p in procs:
        if p.poll() is None:
            p.kill()


def by(spans: list[dict[str, Any]], name: str, uuid: str) -> dict[str, Any]:
    (found,) = [s for s in spans if s["name"] == name and s["attributes"].get("messaging.message.id") == uuid]
    return found


def check_links(result: dict[str, Any], spans: list[dict[str, Any]], worker_pids: list[int]) -> None:
    assert result["chain_result"] == 1112 and result["chord_result"] == 3
    trace_id = result["trace_id"]
    assert {s["trace_id"] for s in spans} == {trace_id}, "every span belongs to the client's one trace"
    # a chain: step 0 is sent by the client; step i+1 by the worker running step i
    parent = result["root_span_id"]
    run_pids = set()
    for uuid in result["chain"]:
        send = by(spans, "send add", uuid)
        run = by(spans, "run add", uuid)
        assert send["kind"] == "PRODUCER" and run["kind"] == "CONSUMER"
        assert send["parent_id"] == parent, "a send is a child of the current span of its sender"
        assert run["parent_id"] == send["span_id"], "a run is a child of its send"
        assert run["attributes"]["machinery.task.state"] == "SUCCESS"
        assert run["attributes"]["messaging.system"] == "machinery"
        assert run["attributes"]["messaging.destination.name"] in ("qa", "qb")
        assert send["attributes"]["messaging.message.id"] == uuid
        for span, operation in ((send, "send"), (run, "process")):
            attrs = span["attributes"]
            assert attrs["messaging.operation.type"] == operation and attrs["messaging.system"] == "machinery"
            assert attrs["machinery.task.name"] == "add" and attrs["machinery.task.retry_count"] == 0
        assert run["attributes"]["machinery.worker"], "the worker's consumer tag"
        run_pids.add(run["pid"])
        parent = run["span_id"]
    assert run_pids == set(worker_pids), "the chain ran on both worker processes"
    # a chord: members sent by the client, the callback by the worker that ran the last member
    member_runs = [by(spans, "run add", u) for u in result["chord_members"]]
    for uuid, run in zip(result["chord_members"], member_runs):
        send = by(spans, "send add", uuid)
        assert send["parent_id"] == result["root_span_id"] and run["parent_id"] == send["span_id"]
    cb_send = by(spans, "send add", result["chord_callback"])
    assert cb_send["parent_id"] in {r["span_id"] for r in member_runs}
    assert by(spans, "run add", result["chord_callback"])["parent_id"] == cb_send["span_id"]


def test_plugin_is_listed() -> None:
    info = next(i for i in get_plugin_host().infos() if i.name == "opentelemetry")
    assert info.distribution == "machinery-opentelemetry" and info.error is None
    assert {"machinery_before_publish", "machinery_task_started"} <= set(info.hooks)


def test_one_trace_across_producer_and_two_workers_w3c(run: Any) -> None:
    result, spans, pids = run()
    check_links(result, spans, pids)
    assert "traceparent" in result["headers"], result["headers"]
    # the workers' JSON log lines carry the trace id of each task
    lines = [json.loads(line) for text in run.logs for line in text.splitlines() if line.startswith("{")]
    done = [line for line in lines if line.get("task_uuid") in result["chain"]]
    assert len(done) == 4 and {line["trace_id"] for line in done} == {result["trace_id"]}, done


def test_b3_propagator_from_otel_propagators(run: Any) -> None:
    result, spans, pids = run("b3multi")
    check_links(result, spans, pids)
    assert "x-b3-traceid" in {h.lower() for h in result["headers"]} and "traceparent" not in result["headers"]


def test_failed_task_span_has_error_status(tmp_path: Path) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from machinery import Config, Server, Signature
    from machinery_opentelemetry import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing._tracer = provider.get_tracer("test")  # this process only; the global provider stays unset
    try:
        name = os.urandom(4).hex()
        server = Server(Config(broker=f"memory://{name}", result_backend=f"memory://{name}"))

        @server.task("fail")
        def fail() -> None:
            raise ValueError("nope")

        worker = server.new_worker(concurrency=1).launch_in_background()
        r = server.send_task(Signature("fail"))
        server.backend.wait_for(r.task_uuid, 10)
        worker.quit()
        server.close()
    finally:
        tracing._tracer = None
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run = spans["run fail"]
    assert run.status.status_code == trace.StatusCode.ERROR and run.attributes["machinery.task.state"] == "FAILURE"
    assert any(e.name == "exception" for e in run.events)
    assert run.parent is not None and run.parent.span_id == spans["send fail"].context.span_id
