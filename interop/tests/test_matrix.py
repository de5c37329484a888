"""Both directions on every broker/backend pair: a Go producer with Python workers, and a
Python producer with Go workers, each sending every scenario of scenarios.SCENARIOS.

One producer run per (pair, direction) is shared by the scenario tests of that pair and
direction; each scenario is its own test, so a failure names the scenario.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import COMBOS, Fleet, cleanup, go_produce, make_env, py_produce
from scenarios import EVERY_TYPE, SCENARIOS

from machinery.signature import from_go, to_go

DIRECTIONS = ["go_producer-py_worker", "py_producer-go_worker"]
Run = dict[str, Any]


@pytest.fixture(scope="session")
def matrix(
    go_bin: Path, side: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str, str], Run]]:
    """``matrix(combo, direction)``: the producer's lines by scenario, run once and cached."""
    cache: dict[tuple[str, str], Run] = {}

    def get(combo: str, direction: str) -> Run:
        if (combo, direction) not in cache:
            cache[combo, direction] = _run(combo, direction)
        run = cache[combo, direction]
        if "error" in run:
            raise AssertionError(run["error"])
        return run

    def _run(combo: str, direction: str) -> Run:
        env = make_env(combo, "m")
        fleet = Fleet(env, go_bin, tmp_path_factory.mktemp(f"{combo}-{direction}"))
        try:
            if direction == "go_producer-py_worker":
                fleet.py_worker()
                fleet.wait_ready()
                lines = go_produce(go_bin, env, SCENARIOS)
            else:
                fleet.go_worker()
                fleet.wait_ready()
                lines = py_produce(env, SCENARIOS, timeout=20.0)
            by_name = {line["scenario"]: line for line in lines}
            types_uuid = by_name["types"]["uuids"][0]
            echo = side.get("interop:echo_types:" + types_uuid)
            return {"lines": by_name, "echo_types": echo.decode() if echo else None, "logs": fleet.logs()}
        except Exception as exc:
            return {"error": f"{combo} {direction}: {exc}\n{fleet.logs()}"}
        finally:
            fleet.stop()
            cleanup(env, side)

    yield get


def _int64(v: int) -> list[dict[str, Any]]:
    return [{"type": "int64", "value": v}]


# The Go type a Python task's result gets for each echoed argument: Python values carry no
# width, so integers are int64 (uint64 above its range), floats float64, bytes []uint8. A list
# of integers some of which exceed int64 must still be a type Go can decode ([]uint64).
PY_RESULT_TYPE = {
    "int": "int64", "int8": "int64", "int16": "int64", "int32": "int64", "uint": "int64", "uint8": "int64",
    "uint16": "int64", "uint32": "int64", "float32": "float64", "[]int": "[]int64", "[]int8": "[]int64",
    "[]int16": "[]int64", "[]int32": "[]int64", "[]uint": "[]int64", "[]uint16": "[]int64", "[]uint32": "[]int64",
    "[]float32": "[]float64", "[]byte": "[]uint8",
}


def expected_types(worker: str) -> list[dict[str, Any]]:
    """The echo task's results: a Go task keeps each argument's type ([]byte is []uint8 to
    reflect); a Python task's results get the types of PY_RESULT_TYPE."""
    out = []
    for t, v in EVERY_TYPE:
        rt = "[]uint8" if t == "[]byte" else t
        if worker == "py":
            rt = PY_RESULT_TYPE.get(t, rt)
        out.append({"type": rt, "value": to_go(t, from_go(t, to_go(t, v)))})
    return out


EXPECTED: dict[str, tuple[list[Any], list[str]]] = {
    "single": ([_int64(2)], [""]),
    "group": ([_int64(2), _int64(4), _int64(6)], ["", "", ""]),
    "chain": ([_int64(48)], [""]),
    "chain_immutable": ([_int64(40)], [""]),  # Go: the finished task's Immutable stops result passing
    "chord": ([_int64(20)], [""]),
    "eta": ([_int64(5)], [""]),
    "retry": ([[{"type": "string", "value": "ok"}]], [""]),
    "retry_later": ([_int64(2)], [""]),
    "on_error": ([None, [{"type": "string", "value": "handled: boom"}]], ["boom", ""]),  # Go: err.Error()
    "failure": ([None], ["boom"]),
}
MIN_ELAPSED_MS = {"eta": 1500, "retry": 900, "retry_later": 900}


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("combo", COMBOS)
def test_scenario(matrix: Callable[[str, str], Run], combo: str, direction: str, scenario: str) -> None:
    run = matrix(combo, direction)
    line = run["lines"][scenario]
    worker = "py" if direction.endswith("py_worker") else "go"
    if scenario == "types":
        assert line["errors"] == [""], line
        assert line["results"] == [expected_types(worker)]
        if worker == "py":  # the Python task saw every Go type as sent
            assert run["echo_types"] == ",".join(t for t, _ in EVERY_TYPE)
        return
    results, errors = EXPECTED[scenario]
    assert (line["results"], line["errors"]) == (results, errors), line
    assert line["elapsed_ms"] >= MIN_ELAPSED_MS.get(scenario, 0), line
