"""Mixed fleets: a Go worker and a Python worker consume the same queue at once while a
producer (Go or Python) sends many chords. Every task and every chord callback must run
exactly once (counted in Redis by the ``count`` task), both languages must take part, and
every callback must see all of its group's results."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from conftest import COMBOS, Env, Fleet, go_produce, py_produce

CHORDS = 30


@pytest.mark.parametrize(
    ("producer", "fleet_kind"),
    [("go", "go+py"), ("py", "go+py"), ("go", "go+go")],
    ids=["go_producer-mixed_fleet", "py_producer-mixed_fleet", "go_producer-go_fleet_baseline"],
)
@pytest.mark.parametrize("combo", COMBOS)
def test_chords_fire_once(
    fleet_factory: Callable[..., tuple[Env, Fleet]],
    side: redis.Redis,
    go_bin: Any,
    combo: str,
    producer: str,
    fleet_kind: str,
) -> None:
    """The go+go baseline shows Go Machinery itself passes this test on the same transport."""
    if fleet_kind == "go+py" and combo.endswith("-amqp"):
        pytest.skip(
            "chords with a Go and a Python worker on one AMQP result backend: Go's AMQP backend "
            "consumes the group queue when it fires and its TriggerChord is a non-atomic existence "
            "check, so a Go worker can take completions a Python worker is counting (README, Go "
            "compatibility: remaining differences)"
        )
    env, fleet = fleet_factory(combo, "fleet")
    fleet.go_worker(concurrency=4)
    if fleet_kind == "go+py":
        fleet.py_worker(concurrency=4)
    else:
        fleet.go_worker(concurrency=4)
    fleet.wait_ready()
    if producer == "go":
        (line,) = go_produce(go_bin, env, ["chords"], args=["-chords", str(CHORDS), "-timeout", "25s"])
    else:
        (line,) = py_produce(env, ["chords"], chords=CHORDS, timeout=25.0)
    time.sleep(1.0)  # a duplicate callback would run right after the first one

    failures = [(i, e) for i, e in enumerate(line["errors"]) if e]
    assert not failures, f"{len(failures)} chords failed, first: {failures[:3]}\n{fleet.logs()}"
    assert line["results"] == [[{"type": "int64", "value": 3 * i + 6}] for i in range(CHORDS)]

    key = env.key
    runs = {f"{key}:{i}{m}": side.get(f"{key}:{i}{m}") for i in range(CHORDS) for m in ("", ":1", ":2", ":3")}
    wrong = {k: v for k, v in runs.items() if v != b"1"}
    assert not wrong, f"tasks not run exactly once (key: runs): {wrong}"
    who: list[bytes] = []
    for k in runs:
        who += side.lrange(k + ":who", 0, -1)
    assert len(who) == 4 * CHORDS
    expected = {b"go", b"py"} if fleet_kind == "go+py" else {b"go"}
    assert set(who) == expected, f"only {set(who)} ran tasks: the fleet was not mixed"


@pytest.mark.parametrize("combo", COMBOS)
def test_unknown_task_names_do_not_starve(
    fleet_factory: Callable[..., tuple[Env, Fleet]], go_bin: Any, combo: str
) -> None:
    """Each worker requeues the task it does not know (Go: back to the tail of the list, or a
    nack with requeue); on a shared queue every task still reaches the worker that knows it."""
    from machinery import Config, Server, Signature

    env, fleet = fleet_factory(combo, "unknown")
    fleet.go_worker(concurrency=2)
    fleet.py_worker(concurrency=2)
    fleet.wait_ready()
    server = Server(Config.from_env(env.vars))
    try:
        sent = [(name, server.send_task(Signature(name))) for name in ("go_only", "py_only") * 10]
        # On Redis, which idle consumer gets a message given back is a race each time (the
        # Python worker's delay is jittered for that): at even odds and ~5 s a bounce, 90 s leaves
        # a task about 18 tries, 2**-18 odds of missing the Go worker every time.
        got = [(name, r.get(timeout=90.0)) for name, r in sent]
    finally:
        server.close()
    assert got == [(name, name.split("_")[0]) for name, _ in sent]
