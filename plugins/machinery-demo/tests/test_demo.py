"""``machinery demo`` end to end, as CI runs it (stdout is not a terminal)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from machinery import TaskResult, TaskState
from machinery_demo.run import ChainRow, ErrorRow, GroupRow, TaskRow


@pytest.mark.slow
def test_demo_runs_every_example_and_exits_0(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER", "RESULT_BACKEND", "DEFAULT_QUEUE")}
    env["TMPDIR"] = str(tmp_path)
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "machinery", "demo"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    elapsed = time.monotonic() - t0
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert elapsed < 20
    assert "\x1b[" not in out  # plain lines when stdout is not a terminal
    for expected in (
        "add(1, 1)",
        "SUCCESS  = 2",
        "= 42",
        "10/10  = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]",
        "chord: multiply(add(1, 1), add(5, 5))",
        "SUCCESS  = 20",
        "SUCCESS  = 48",
        "ms after its ETA",
        "RETRY",
        "= 7 after 1 retry",
        "on_error = 'handled: division by zero'",
        "8/8 examples gave the expected result; worker stopped with SIGTERM (exit status 0)",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert not any(p.name.startswith("machinery-demo-") for p in tmp_path.iterdir())  # cleaned up
    assert not (tmp_path / "machinery.db").exists()  # the demo never touches ./machinery.db


def state(uuid: str, name: str, *values: int, error: str = "") -> TaskState:
    if error:
        return TaskState(task_uuid=uuid, state="FAILURE", error=error)
    return TaskState(task_uuid=uuid, state="SUCCESS", results=[TaskResult("int64", v) for v in values])


def test_rows_judge_outcomes() -> None:
    row = TaskRow("add", "a", 2)
    row.update({"a": None}, 0)
    assert (row.status, row.done) == ("PENDING", False)
    row.update({"a": state("a", "add", 3)}, 0)
    assert row.done and not row.ok and "expected 2" in row.detail

    group = GroupRow("g", ["a", "b"], [1, 2])
    group.update({"a": state("a", "add", 1), "b": None}, 0)
    assert group.status.endswith("1/2") and not group.done
    group.update({"a": state("a", "add", 1), "b": state("b", "add", 2)}, 0)
    assert group.done and group.ok

    chain = ChainRow("c", ["a", "b"], 5)
    chain.update({"a": state("a", "add", 1), "b": state("b", "add", 0, error="ValueError: x")}, 0)
    assert chain.done and not chain.ok

    err = ErrorRow("e", "a", "cb", "ZeroDivisionError")
    err.update({"a": state("a", "divide", error="ZeroDivisionError: division by zero"), "cb": None}, 0)
    assert not err.done and err.status.startswith("FAILURE")
    cb = TaskState(task_uuid="cb", state="SUCCESS", results=[TaskResult("string", "handled: ZeroDivisionError")])
    err.update({"a": state("a", "divide", error="ZeroDivisionError: division by zero"), "cb": cb}, 0)
    assert err.done and err.ok
