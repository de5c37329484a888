"""The Python producer of the interop tests: the same scenarios, arguments and output lines as
the Go producer (interop/go/cmd/goproducer/main.go), sent with this project's API."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from machinery import Arg, Chain, Chord, Group, Server, Signature
from machinery.errors import MachineryError, TaskFailedError
from machinery.signature import new_uuid, to_go

SCENARIOS = [
    "single", "group", "chain", "chain_immutable", "chord", "eta", "retry", "retry_later",
    "on_error", "types", "failure",
]

# (Go type, value) of the "types" scenario, the same values as everyType() in goproducer.
EVERY_TYPE: list[tuple[str, Any]] = [
    ("bool", True),
    ("int", -7),
    ("int8", -8),
    ("int16", -16),
    ("int32", -32),
    ("int64", -9007199254740993),
    ("uint", 7),
    ("uint8", 8),
    ("uint16", 16),
    ("uint32", 32),
    ("uint64", 18446744073709551615),
    ("float32", 1.5),
    ("float64", 0.1),
    ("string", 'héllo <&> "q"'),
    ("[]bool", [True, False]),
    ("[]int", [1, -2]),
    ("[]int8", [-128, 127]),
    ("[]int16", [-32768, 32767]),
    ("[]int32", [-2147483648, 2147483647]),
    ("[]int64", [-9223372036854775808, 9223372036854775807]),
    ("[]uint", [0, 1]),
    ("[]uint8", bytes([0, 255])),
    ("[]uint16", [0, 65535]),
    ("[]uint32", [0, 4294967295]),
    ("[]uint64", [0, 18446744073709551615]),
    ("[]float32", [0.5, -2.25]),
    ("[]float64", [1e-7, 12345.678]),
    ("[]string", ["a", ""]),
    ("[]byte", b"bytes\x00\xff"),
]


def sig(name: str, *args: Arg) -> Signature:
    """A signature with a ``task_`` UUID, as Go's ``tasks.NewSignature`` makes it."""
    return Signature(name, args=list(args), uuid=new_uuid("task_"))


def i64(*values: int) -> list[Arg]:
    """``int64`` arguments."""
    return [Arg("int64", v) for v in values]


def _values(results: Any) -> list[dict[str, Any]]:
    return [{"type": r.type, "value": to_go(r.type, r.value)} for r in results]


def run(
    server: Server,
    names: list[str],
    *,
    key: str,
    timeout: float = 30.0,
    chords: int = 30,
    send_only: bool = False,
    capture: str = "",
) -> list[dict[str, Any]]:
    """Send each scenario, wait for its results (unless ``send_only``), return Go's lines."""
    return [_run(server, name, key, timeout, chords, send_only, capture) for name in names]


def _run(
    server: Server, name: str, key: str, timeout: float, chords: int, send_only: bool, capture: str
) -> dict[str, Any]:
    line: dict[str, Any] = {"scenario": name, "uuids": [], "results": [], "errors": []}
    getters: list[Callable[[], Any]] = []
    start = time.monotonic()

    def one(s: Signature) -> None:
        r = server.send_task(s)
        line["uuids"].append(s.uuid)
        getters.append(lambda: r.results(timeout))

    if name == "single":
        one(sig("add", *i64(1, 1)))
    elif name == "failure":
        one(sig("fail"))
    elif name == "types":
        one(sig("echo", *[Arg(t, v) for t, v in EVERY_TYPE]))
    elif name == "group":
        g = Group(sig("add", *i64(1, 1)), sig("add", *i64(2, 2)), sig("add", *i64(3, 3)))
        rs = server.send_group(g)
        line["uuids"] = [g.group_uuid, *g.uuids()]
        getters += [lambda r=r: r.results(timeout) for r in rs]
    elif name in ("chain", "chain_immutable"):
        first = sig("add", *i64(1, 1))
        first.immutable = name == "chain_immutable"
        c = Chain(first, sig("add", *i64(5, 5)), sig("multiply", *i64(4)))
        cr = server.send_chain(c)
        line["uuids"] = [t.uuid for t in c.tasks]
        getters.append(lambda: cr.results(timeout))
    elif name == "chord":
        g = Group(sig("add", *i64(1, 1)), sig("add", *i64(5, 5)))
        ch = Chord(g, sig("multiply"))
        chr_ = server.send_chord(ch)
        line["uuids"] = [g.group_uuid, ch.callback.uuid, *g.uuids()]
        getters.append(lambda: chr_.results(timeout))
    elif name == "eta":
        s = sig("add", *i64(2, 3))
        s.eta = datetime.now(timezone.utc) + timedelta(seconds=2)
        one(s)
    elif name == "retry":
        s = sig("flaky")
        s.retry_count = 1
        one(s)
    elif name == "retry_later":
        one(sig("retry_later", Arg("string", key + ":retry_later")))
    elif name == "on_error":
        cb = sig("report_error")
        s = sig("fail")
        s.on_error = [cb]
        one(s)
        line["uuids"].append(cb.uuid)
        getters.append(lambda: server.async_result(cb.uuid).results(timeout))
    elif name == "chords":
        deadline = time.monotonic() + timeout  # one deadline for all: lost callbacks cost it once
        for i in range(chords):
            members = [sig("count", Arg("string", f"{key}:{i}:{j}"), *i64(i, j)) for j in (1, 2, 3)]
            cb = sig("count", Arg("string", f"{key}:{i}"))
            r = server.send_chord(Chord(Group(*members), cb))
            line["uuids"].append(cb.uuid)
            getters.append(lambda r=r: r.results(max(2.0, deadline - time.monotonic())))
    elif name == "followups":
        second = sig("add", *i64(5, 5))
        second.routing_key = capture
        c = Chain(sig("add", *i64(1, 1)), second)
        server.send_chain(c)
        cb = sig("report_error")
        cb.routing_key = capture
        f = sig("fail")
        f.on_error = [cb]
        server.send_task(f)
        g = Group(sig("add", *i64(1, 1)), sig("add", *i64(5, 5)))
        chord_cb = sig("multiply")
        chord_cb.routing_key = capture
        server.send_chord(Chord(g, chord_cb))
        line["uuids"] = [c.tasks[0].uuid, second.uuid, f.uuid, cb.uuid, g.group_uuid, chord_cb.uuid, *g.uuids()]
    else:
        raise ValueError(f"unknown scenario {name!r}")

    if not send_only:
        for get in getters:
            try:
                line["results"].append(_values(get()))
                line["errors"].append("")
            except TaskFailedError as exc:
                line["results"].append(None)
                line["errors"].append(exc.error)
            except MachineryError as exc:
                line["results"].append(None)
                line["errors"].append(f"{type(exc).__name__}: {exc}")
    line["elapsed_ms"] = int((time.monotonic() - start) * 1000)
    return line
