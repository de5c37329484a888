"""The documentation's example runner: every fenced code block of ``docs/`` and ``README.md``.

A page's examples run in order, in a fresh process, in an empty temporary directory:

- ``python`` blocks run in one namespace per page (like a notebook: a later block sees what an
  earlier one defined); a failing block fails the page, with the Markdown file's line numbers
  in the traceback;
- ``sh``/``bash`` blocks run with ``bash -e`` in that directory, with the interpreter's
  ``bin`` first on ``PATH`` (so ``machinery`` is the one under test);
- other languages (``yaml``, ``text``, ``go``...) are not run, unless marked.

Markers are HTML comments on the line(s) just before a block (invisible on the site):

- ``<!-- example: skip REASON -->``: not run; the reason is required and reported;
- ``<!-- example: file NAME -->``: the block is written to ``NAME`` in the page's directory
  before any block runs (a module for ``--app``, a YAML config...); it is not run itself;
- ``<!-- example: background -->``: a shell block started in the background (a worker) and
  stopped with SIGTERM when the page ends; it must then exit with status 0;
- ``<!-- example: gofmt -->``: a ``go`` block that must be a whole Go file, syntactically valid
  and formatted as ``gofmt`` prints it (checked when ``gofmt`` is installed, else reported as
  skipped). It is not compiled: that needs Go Machinery's modules.

``python tests/docs/examples.py PAGE.md`` runs one page and prints a JSON summary as its last
line; ``tests/docs/test_examples.py`` runs every page that way.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGS = {"python": "python", "py": "python", "sh": "sh", "bash": "sh", "shell": "sh"}
MARKER = re.compile(r"<!--\s*example:\s*(\w[\w-]*)\s*(.*?)\s*-->")
#: page -> summary of its run, filled by test_examples.py for the terminal summary.
RESULTS: dict[str, dict[str, Any]] = {}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)[^\n]*$")


@dataclass
class Block:
    """One fenced code block and the markers before it."""

    path: str
    line: int  # line of the first code line (1-based)
    lang: str
    code: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``python``, ``sh`` or ``""`` (not an executable language)."""
        return RUN_LANGS.get(self.lang.lower(), "")

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


class MarkerError(ValueError):
    """A malformed ``<!-- example: ... -->`` marker."""


def extract(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of a Markdown file, with its markers."""
    text = path.read_text(encoding="utf-8") if text is None else text
    rel = str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else str(path)
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if m:
            indent, fence = m.group("indent"), m.group("fence")
            body: list[str] = []
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(fence):
                body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
                j += 1
            blocks.append(Block(rel, i + 2, m.group("lang"), "\n".join(body) + "\n", pending))
            pending = {}
            i = j + 1
            continue
        for mm in MARKER.finditer(line):
            name, arg = mm.group(1), mm.group(2)
            if name not in ("skip", "file", "background", "gofmt"):
                raise MarkerError(f"{rel}:{i + 1}: unknown example marker {name!r}")
            if name in ("skip", "file") and not arg:
                what = "a reason" if name == "skip" else "a file name"
                raise MarkerError(f"{rel}:{i + 1}: '<!-- example: {name} -->' needs {what}")
            pending[name] = arg
        if line.strip() and not MARKER.search(line):
            pending = {}  # a marker applies to the block right after it
        i += 1
    return blocks


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass
class Outcome:
    """What running one page did."""

    executed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)
    files: int = 0
    gofmt: int = 0
    error: str = ""


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_page(path: Path, workdir: Path, *, timeout: float = 120.0) -> Outcome:
    """Run a page's blocks in ``workdir`` (this process: call it in a fresh one)."""
    out = Outcome()
    blocks = extract(path)
    os.chdir(workdir)
    sys.path.insert(0, str(workdir))
    env = _env(workdir)
    for b in blocks:
        if "file" in b.markers and "skip" not in b.markers:
            target = workdir / b.markers["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(b.code, encoding="utf-8")
            out.files += 1
    namespace: dict[str, object] = {"__name__": "__main__"}
    background: list[tuple[Block, subprocess.Popen[bytes]]] = []
    deadline = time.monotonic() + timeout
    try:
        for b in blocks:
            if "skip" in b.markers:
                if b.kind or b.lang == "go":
                    out.skipped.append((b.where, b.markers["skip"]))
                continue
            if "file" in b.markers:
                if b.kind == "python":
                    compile(b.code, b.where, "exec")  # a module file must at least compile
                continue
            if b.lang == "go" and "gofmt" in b.markers:
                if shutil.which("gofmt") is None:
                    out.skipped.append((b.where, "gofmt is not installed: Go syntax not checked"))
                    continue
                res = subprocess.run(["gofmt", "-e"], input=b.code, capture_output=True, text=True, timeout=60)
                if res.returncode != 0:
                    raise RuntimeError(f"{b.where}: Go syntax error\n{res.stderr}")
                if res.stdout != b.code:
                    diff = "".join(difflib.unified_diff(b.code.splitlines(True), res.stdout.splitlines(True)))
                    raise RuntimeError(f"{b.where}: Go code is not gofmt-formatted\n{diff}")
                out.gofmt += 1
                continue
            if b.lang == "go":
                raise MarkerError(f"{b.where}: a go block needs '<!-- example: skip REASON -->' or 'gofmt'")
            if not b.kind:
                continue
            if b.kind == "python":
                code = compile("\n" * (b.line - 1) + b.code, str(ROOT / b.path), "exec")
                try:
                    exec(code, namespace)
                except BaseException as exc:
                    tb = "".join(traceback.format_exception(exc))
                    raise RuntimeError(f"{b.where}: python example failed\n{tb}") from None
            elif "background" in b.markers:
                if "\n" in b.code.strip():
                    raise MarkerError(f"{b.where}: a background block holds one command")
                cmd = ["bash", "-c", "exec " + b.code.strip()]
                proc = subprocess.Popen(cmd, cwd=workdir, env=env, start_new_session=True)
                background.append((b, proc))
                time.sleep(0.2)
                if proc.poll() is not None:
                    raise RuntimeError(f"{b.where}: background command exited at once with status {proc.returncode}")
            else:
                left = max(1.0, deadline - time.monotonic())
                cmd = ["bash", "-e", "-o", "pipefail", "-c", b.code]
                res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=left)
                sys.stdout.write(res.stdout)
                sys.stderr.write(res.stderr)
                if res.returncode != 0:
                    msg = f"{b.where}: shell example exited with status {res.returncode}"
                    raise RuntimeError(f"{msg}\n$ {b.code}{res.stdout}{res.stderr}")
            out.executed += 1
    finally:
        for b, proc in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
                if not out.error:
                    out.error = f"{b.where}: background command did not stop within 30 s of SIGTERM"
            if code != 0 and not out.error and sys.exc_info()[0] is None:
                out.error = f"{b.where}: background command exited with status {code} after SIGTERM"
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/docs/examples.py PAGE.md", file=sys.stderr)
        return 2
    path = Path(argv[0]).resolve()
    with tempfile.TemporaryDirectory(prefix="docs-example-") as tmp:
        try:
            out = run_page(path, Path(tmp))
        except (RuntimeError, MarkerError, subprocess.TimeoutExpired) as exc:
            print(str(exc), file=sys.stderr)
            return 1
        finally:
            os.chdir(ROOT)
    summary = {"executed": out.executed, "skipped": out.skipped, "files": out.files, "gofmt": out.gofmt}
    print(json.dumps({**summary, "error": out.error}))
    if out.error:
        print(out.error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
