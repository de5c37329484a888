"""The producer process of the tracing tests: sends a chain, a chord and a failing task under one
root span, waits for the results, prints the root span's trace id and the results as JSON."""

from __future__ import annotations

import json
import sys

from opentelemetry import trace
from otelapp import provider, server

from machinery import Chain, Chord, Group, Signature


def main() -> None:
    tracer = trace.get_tracer("producer")
    out: dict[str, object] = {}
    with tracer.start_as_current_span("client") as root:
        out["trace_id"] = f"{root.get_span_context().trace_id:032x}"
        out["root_span_id"] = f"{root.get_span_context().span_id:016x}"
        steps = [
            Signature("add", args=[1, 1], routing_key="qa"),
            Signature("add", args=[10], routing_key="qb"),
            Signature("add", args=[100], routing_key="qa"),
            Signature("add", args=[1000], routing_key="qb"),
        ]
        chain = Chain(*steps)
        out["chain"] = [s.uuid for s in chain.tasks]
        chain_result = server.send_chain(chain)
        members = [Signature("add", args=[i], routing_key="qa" if i % 2 else "qb") for i in range(3)]
        chord = Chord(Group(*members), Signature("add", routing_key="qa"))
        out["chord_members"] = [s.uuid for s in members]
        out["chord_callback"] = chord.callback.uuid
        chord_result = server.send_chord(chord)
        headers = server.send_task(Signature("headers", routing_key="qb"))
        out["chain_result"] = chain_result.get(timeout=60)
        out["chord_result"] = chord_result.get(timeout=60)
        out["headers"] = headers.get(timeout=60)
    provider.force_flush()
    server.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
