"""The benchmark harness still works: ``benchmarks/run.py --smoke`` for machinery only (no peers),
and ``--quick`` (machinery, the redis-py floor and Go Machinery: every section of the full run).

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
    main_table = text.split("\n## ")[0]  # the other sections repeat some rows with fewer columns
    rows = {line.split("|")[1].strip(): line for line in main_table.splitlines() if line.startswith("| machinery (")}
    assert set(rows) == {"machinery (redis)", "machinery (embedded sqlite://)"}, text
    for name, line in rows.items():
        cells = [c.strip() for c in line.strip("|").split("|")[1:]]
        # enqueue, group, drain on/off, worker CPU per task, round trip p50/p99, ETA p50/p99,
        # RSS, import alone and with the main API: all numbers
        assert len(cells) == 12, line
        for cell in cells:
            assert re.fullmatch(r"-?[\d,]+(\.\d+)?", cell), f"{name}: {cell!r} in {line}"
    assert re.search(r"Machine: .+ cores", text)
    # the plugin discovery section that keeps machinery._entrypoints honest (docs/performance.md)
    assert re.search(r"\| plugin host loaded, entry points read by `machinery._entrypoints` \| [\d.]+ \|", text), text
    assert "`machinery._entrypoints` saves" in text, text


@pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("CI"),
    reason="redis-server is not installed (scripts/start-services installs it)",
)
@pytest.mark.timeout(600)  # the first run on a machine may install Debian's Go and build Go Machinery
def test_bench_quick(tmp_path: Path) -> None:
    """``--quick``: the main table, the concurrency sweep, the Go Machinery peer (built by
    interop/go/build.sh; required on CI, where the interop session needs it too), one vs two
    worker processes and the issue-23 targets table, end to end."""
    pytest.importorskip("machinery_redis", reason="machinery-redis is not installed in this environment")
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "FAILED" not in text, text
    row = re.compile(r"\| (machinery|Go Machinery v2) \| (no-op|I/O-bound)")
    sweep = [line for line in text.splitlines() if row.match(line)]
    go_built = "Go Machinery v2 (redis) | n/a" not in text
    if os.environ.get("CI"):
        assert go_built, text
    assert len(sweep) == 4, text
    for line in sweep:
        if not go_built and line.startswith("| Go Machinery"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")[2:4]]  # c = 1, c = 8
        for cell in cells:
            assert re.fullmatch(r"[\d,]+", cell), f"{cell!r} in {line}"
    assert re.search(r"two worker processes [\d,]+/s", text), text
    assert "## Targets of issue 23" in text
    assert re.search(r"\| worker CPU per no-op task ≤ 200 µs .* \| \d+ µs \| (met|NOT met) \|", text), text
