"""Every code example of the documentation (docs/ and README.md) runs, page by page.

See ``examples.py`` for the conventions. Each page runs in its own process and directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from examples import RESULTS, ROOT, extract, pages

RUNNER = Path(__file__).with_name("examples.py")
PAGES = [p for p in pages() if any(b.kind or b.lang == "go" for b in extract(p))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page(page: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(RUNNER), str(page)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, f"{page.relative_to(ROOT)}:\n{res.stderr[-6000:]}\n{res.stdout[-2000:]}"
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    RESULTS[str(page.relative_to(ROOT))] = summary
    assert summary["executed"] + len(summary["skipped"]) + summary["files"] + summary["gofmt"] > 0


def test_every_page_is_collected() -> None:
    # The site's pages and the README are all looked at (a page moved out of docs/ would not be).
    names = {str(p.relative_to(ROOT)) for p in pages()}
    assert "README.md" in names and "docs/index.md" in names
