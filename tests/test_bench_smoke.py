"""The benchmark harness still works: ``benchmarks/run.py --smoke`` for machinery only (no peers).

Speed is not checked here (CI machines vary); only that every scenario produces a number.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("CI"),
    reason="redis-server is not installed (scripts/start-services installs it)",
)
def test_bench_smoke(tmp_path: Path) -> None:
    pytest.importorskip("machinery_redis", reason="machinery-redis is not installed in this environment")
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke"]
    cmd += ["--systems", "machinery,machinery-sqlite", "--out", str(out), "--plot", ""]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "FAILED" not in text, text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| machinery (")}
    assert set(rows) == {"machinery (redis)", "machinery (embedded sqlite://)"}, text
    for name, line in rows.items():
        cells = [c.strip() for c in line.strip("|").split("|")[1:]]
        # enqueue, group, drain on/off, round trip p50/p99, ETA p50/p99, RSS, import alone and
        # with the main API: all numbers
        assert len(cells) == 11, line
        for cell in cells:
            assert re.fullmatch(r"-?[\d,]+(\.\d+)?", cell), f"{name}: {cell!r} in {line}"
    assert re.search(r"Machine: .+ cores", text)
