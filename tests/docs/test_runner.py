"""The example runner itself: it must fail on a broken example and honour its markers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from examples import MarkerError, extract

RUNNER = Path(__file__).with_name("examples.py")


def run(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    page = tmp_path / "page.md"
    page.write_text(text)
    return subprocess.run([sys.executable, str(RUNNER), str(page)], capture_output=True, text=True, timeout=60)


def test_a_failing_python_example_fails_the_page_with_its_line(tmp_path: Path) -> None:
    res = run(tmp_path, "# t\n\n```python\nx = 1\n```\n\ntext\n\n```python\nassert x == 2\n```\n")
    assert res.returncode == 1
    assert "page.md:10" in res.stderr and "AssertionError" in res.stderr


def test_python_blocks_share_a_namespace_and_shell_runs_in_the_same_directory(tmp_path: Path) -> None:
    text = (
        "```python\nopen('made.txt', 'w').write('hi')\nx = 41\n```\n"
        "```python\nassert x + 1 == 42\n```\n"
        "```sh\ntest \"$(cat made.txt)\" = hi\n```\n"
    )
    res = run(tmp_path, text)
    assert res.returncode == 0, res.stderr
    assert '"executed": 3' in res.stdout


def test_a_failing_shell_example_fails(tmp_path: Path) -> None:
    res = run(tmp_path, "```sh\ntrue\nfalse\necho never\n```\n")
    assert res.returncode == 1 and "status 1" in res.stderr


def test_file_and_skip_markers(tmp_path: Path) -> None:
    text = (
        "<!-- example: file mod.py -->\n```python\nVALUE = 7\n```\n\n"
        "```python\nimport mod\nassert mod.VALUE == 7\n```\n\n"
        "<!-- example: skip needs a cluster -->\n```python\nraise SystemExit(1)\n```\n"
    )
    res = run(tmp_path, text)
    assert res.returncode == 0, res.stderr
    assert '"skipped": [["' in res.stdout and "needs a cluster" in res.stdout


def test_a_skip_without_a_reason_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("<!-- example: skip -->\n```python\npass\n```\n")
    with pytest.raises(MarkerError, match="needs a reason"):
        extract(page)


def test_a_marker_applies_only_to_the_next_block(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("<!-- example: skip slow -->\n\nSome text.\n\n```python\npass\n```\n")
    assert extract(page)[0].markers == {}


def test_a_go_block_must_be_marked(tmp_path: Path) -> None:
    res = run(tmp_path, "```go\npackage main\n```\n")
    assert res.returncode == 1 and "go block" in res.stderr


def test_a_background_command_is_stopped_and_must_exit_cleanly(tmp_path: Path) -> None:
    ok = run(tmp_path, "<!-- example: background -->\n```sh\nsleep 30\n```\n```sh\ntrue\n```\n")
    # sleep dies of SIGTERM (status -15): the runner reports it
    assert ok.returncode == 1 and "after SIGTERM" in ok.stderr


@pytest.mark.skipif(shutil.which("gofmt") is None, reason="gofmt is not installed")
def test_a_go_block_is_checked_with_gofmt(tmp_path: Path) -> None:
    good = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hi")\n}\n'
    assert run(tmp_path, f"<!-- example: gofmt -->\n```go\n{good}```\n").returncode == 0
    broken = good.replace("{", "", 1)
    res = run(tmp_path, f"<!-- example: gofmt -->\n```go\n{broken}```\n")
    assert res.returncode == 1 and "Go syntax error" in res.stderr
    unformatted = good.replace("\t", "    ")
    res = run(tmp_path, f"<!-- example: gofmt -->\n```go\n{unformatted}```\n")
    assert res.returncode == 1 and "not gofmt-formatted" in res.stderr
