"""Collects what the example runner did, for the summary at the end of ``nox -s docs``."""

from __future__ import annotations

from typing import Any

from examples import RESULTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    executed = sum(r["executed"] for r in RESULTS.values())
    files = sum(r["files"] for r in RESULTS.values())
    skipped = [s for r in RESULTS.values() for s in r["skipped"]]
    tr = terminalreporter
    tr.section("documentation examples")
    gofmt = sum(r.get("gofmt", 0) for r in RESULTS.values())
    tr.write_line(f"{len(RESULTS)} pages: {executed} examples executed, {files} written as files,")
    tr.write_line(f"{gofmt} Go files gofmt-checked, {len(skipped)} skipped")
    for where, reason in skipped:
        tr.write_line(f"  skipped {where}: {reason}")
