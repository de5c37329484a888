"""``machinery demo``: a worker subprocess on a fresh embedded queue, the seed examples, and a
live view of every state and result as it arrives.

On a terminal the view is redrawn in place (plain ANSI); otherwise (CI, pipes) each change is
printed as one line. The worker is shut down with SIGTERM (a warm shutdown) at the end, and the
exit status is 0 only if every example produced the expected outcome and the worker exited
cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from machinery import Arg, Chain, Chord, Config, Group, Server, Signature, TaskState

__all__ = ["run_demo"]

POLL = 0.05
States = Mapping[str, "TaskState | None"]


def sig(name: str, *values: Any, **options: Any) -> Signature:
    """A signature with argument types inferred from Python values."""
    return Signature(name, args=[Arg.of(v) for v in values], **options)


def _state(states: States, uuid: str) -> str:
    st = states.get(uuid)
    return st.state if st is not None else "PENDING"


def _value(st: TaskState | None) -> Any:
    if st is None or not st.results:
        return None
    vals = st.values
    return vals[0] if len(vals) == 1 else vals


class Row(ABC):
    """One example on screen: its label, what it should give, and what it shows now."""

    def __init__(self, label: str, expect: str) -> None:
        self.label = label
        self.expect = expect
        self.status = "PENDING"
        self.detail = ""
        self.done = False
        self.ok = False

    @abstractmethod
    def uuids(self) -> list[str]:
        """Task UUIDs this row watches."""

    @abstractmethod
    def update(self, states: States, now: float) -> None:
        """Refresh :attr:`status`, :attr:`detail`, :attr:`done` and :attr:`ok`."""

    def _finish(self, st: TaskState | None, expected: Any) -> None:
        if st is None:
            return
        self.status = st.state
        if st.is_success:
            value = _value(st)
            self.done, self.ok = True, value == expected
            self.detail = f"= {value!r}" + ("" if self.ok else f" (expected {expected!r})")
        elif st.is_failure:
            self.done, self.ok = True, False
            self.detail = st.error


class TaskRow(Row):
    """A single task with an expected value."""

    def __init__(self, label: str, uuid: str, expected: Any) -> None:
        super().__init__(label, repr(expected))
        self.uuid = uuid
        self.expected = expected

    def uuids(self) -> list[str]:
        return [self.uuid]

    def update(self, states: States, now: float) -> None:
        st = states.get(self.uuid)
        self.status = _state(states, self.uuid)
        self._finish(st, self.expected)


class GroupRow(Row):
    """A group: a progress bar, then every member's value."""

    def __init__(self, label: str, uuids: Sequence[str], expected: list[Any]) -> None:
        super().__init__(label, repr(expected))
        self.members = list(uuids)
        self.expected = expected
        self.completed = 0

    def uuids(self) -> list[str]:
        return self.members

    def update(self, states: States, now: float) -> None:
        sts = [states.get(u) for u in self.members]
        n = len(sts)
        self.completed = sum(1 for s in sts if s is not None and s.is_completed)
        bar = "#" * round(10 * self.completed / n)
        self.status = f"[{bar:<10}] {self.completed}/{n}"
        if self.completed == n:
            values = [_value(s) for s in sts]
            self.done = True
            self.ok = all(s is not None and s.is_success for s in sts) and values == self.expected
            self.detail = f"= {values!r}"


class ChordRow(Row):
    """A chord: the group's progress, then the callback."""

    def __init__(self, label: str, members: Sequence[str], callback: str, expected: Any) -> None:
        super().__init__(label, repr(expected))
        self.members = list(members)
        self.callback = callback
        self.expected = expected

    def uuids(self) -> list[str]:
        return [*self.members, self.callback]

    def update(self, states: States, now: float) -> None:
        done = sum(1 for u in self.members if _state(states, u) in ("SUCCESS", "FAILURE"))
        if done < len(self.members):
            self.status = f"group {done}/{len(self.members)}"
            return
        self.status = f"callback {_state(states, self.callback)}"
        self._finish(states.get(self.callback), self.expected)


class ChainRow(Row):
    """A chain: which step runs, then the last value."""

    def __init__(self, label: str, steps: Sequence[str], expected: Any) -> None:
        super().__init__(label, repr(expected))
        self.steps = list(steps)
        self.expected = expected

    def uuids(self) -> list[str]:
        return self.steps

    def update(self, states: States, now: float) -> None:
        for i, u in enumerate(self.steps):
            st = states.get(u)
            if st is None or not st.is_success or i == len(self.steps) - 1:
                self.status = f"step {i + 1}/{len(self.steps)} {_state(states, u)}"
                if st is not None and st.is_failure:
                    self._finish(st, self.expected)
                break
        last = states.get(self.steps[-1])
        if last is not None and last.is_completed:
            self._finish(last, self.expected)


class DelayedRow(TaskRow):
    """A task with an ETA: the countdown, then how soon after its ETA it ran."""

    def __init__(self, label: str, uuid: str, expected: Any, eta: datetime) -> None:
        super().__init__(label, uuid, expected)
        self.eta = eta

    def update(self, states: States, now: float) -> None:
        super().update(states, now)
        if self.done:
            st = states.get(self.uuid)
            if st is not None and self.ok:
                late = (st.created_at - self.eta).total_seconds() * 1000
                self.detail += f", finished {late:.0f} ms after its ETA"
        elif self.status == "PENDING":
            left = (self.eta - datetime.now(timezone.utc)).total_seconds()
            self.status = "DELAYED"
            self.detail = f"ETA in {max(left, 0):.1f}s"


class RetryRow(TaskRow):
    """A task that fails once, is retried, then succeeds."""

    def __init__(self, label: str, uuid: str, expected: Any) -> None:
        super().__init__(label, uuid, expected)
        self.retried = False

    def update(self, states: States, now: float) -> None:
        super().update(states, now)
        if self.status == "RETRY":
            self.retried = True
            self.detail = "failed once; retrying in 1s"
        if self.done and self.ok:
            self.detail += " after 1 retry" if self.retried else ""


class ErrorRow(Row):
    """A failing task with an ``on_error`` callback."""

    def __init__(self, label: str, uuid: str, callback: str, must_contain: str) -> None:
        super().__init__(label, f"FAILURE, then the callback reports {must_contain}")
        self.uuid = uuid
        self.callback = callback
        self.must_contain = must_contain

    def uuids(self) -> list[str]:
        return [self.uuid, self.callback]

    def update(self, states: States, now: float) -> None:
        st = states.get(self.uuid)
        self.status = _state(states, self.uuid)
        if st is None or not st.is_completed:
            return
        if st.is_success:
            self.done, self.ok, self.detail = True, False, f"unexpectedly succeeded: {_value(st)!r}"
            return
        cb = states.get(self.callback)
        self.status = f"FAILURE, on_error {_state(states, self.callback)}"
        self.detail = st.error
        if cb is not None and cb.is_completed:
            value = _value(cb)
            self.done = True
            self.ok = cb.is_success and isinstance(value, str) and self.must_contain in value
            self.detail = f"{st.error} -> on_error = {value!r}" if cb.is_success else f"on_error failed: {cb.error}"


def send_examples(server: Server) -> list[Row]:
    """Send the seed examples; one :class:`Row` for each."""
    rows: list[Row] = []

    r = server.send_task(sig("add", 1, 1))
    rows.append(TaskRow("add(1, 1)", r.task_uuid, 2))

    r = server.send_task(sig("multiply", 2, 3, 7))
    rows.append(TaskRow("multiply(2, 3, 7)", r.task_uuid, 42))

    group = Group([sig("add", i, i) for i in range(1, 11)])
    server.send_group(group)
    rows.append(GroupRow("group: add(i, i) for i in 1..10", group.uuids(), [2 * i for i in range(1, 11)]))

    chord = Chord(Group(sig("add", 1, 1), sig("add", 5, 5)), sig("multiply"))
    server.send_chord(chord)
    rows.append(ChordRow("chord: multiply(add(1, 1), add(5, 5))", chord.group.uuids(), chord.callback.uuid, 20))

    chain = Chain(sig("add", 1, 1), sig("add", 5, 5), sig("multiply", 4))
    server.send_chain(chain)
    rows.append(ChainRow("chain: multiply(4, add(5, 5, add(1, 1)))", [t.uuid for t in chain.tasks], 48))

    eta = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    r = server.send_task(sig("add", 2, 2, eta=eta))
    rows.append(DelayedRow("delayed: add(2, 2), ETA now+1.5s", r.task_uuid, 4, eta))

    r = server.send_task(sig("flaky_add", 3, 4, retry_count=1))
    rows.append(RetryRow("retry: flaky_add(3, 4), retry_count=1", r.task_uuid, 7))

    callback = sig("report_error", uuid=f"task_{uuid.uuid4()}")
    r = server.send_task(sig("divide", 1, 0, on_error=[callback]))
    rows.append(ErrorRow("failure: divide(1, 0) + on_error", r.task_uuid, callback.uuid, "division by zero"))
    return rows


# -- views --------------------------------------------------------------------------------------


class LineView:
    """One line per change: readable in CI logs and pipes."""

    def __init__(self, out: TextIO, rows: Sequence[Row], t0: float) -> None:
        self.out = out
        self.rows = rows
        self.t0 = t0
        self.width = max(len(r.label) for r in rows)
        self.shown: dict[int, tuple[str, bool]] = {}

    def note(self, text: str) -> None:
        """Print a message."""
        print(text, file=self.out, flush=True)

    def render(self, now: float) -> None:
        """Print the rows whose status changed (not mere countdowns)."""
        for i, row in enumerate(self.rows):
            cur = (row.status, row.done)
            if self.shown.get(i) == cur:
                continue
            self.shown[i] = cur
            mark = ("ok  " if row.ok else "FAIL") if row.done else "    "
            line = f"[{now - self.t0:6.2f}s] {mark} {row.label:<{self.width}}  {row.status}"
            print(f"{line}  {row.detail}".rstrip(), file=self.out, flush=True)

    def close(self) -> None:
        """Nothing to restore."""


class TerminalView(LineView):
    """The rows redrawn in place with ANSI escapes (colour unless ``NO_COLOR`` is set)."""

    def __init__(self, out: TextIO, rows: Sequence[Row], t0: float) -> None:
        super().__init__(out, rows, t0)
        self.drawn = 0
        self.color = not os.environ.get("NO_COLOR")
        enc = (getattr(out, "encoding", None) or "").lower()
        self.glyphs = ("✔", "✘", "…") if enc.startswith("utf") else ("+", "x", ".")
        self.out.write("\x1b[?25l")  # hide the cursor while redrawing

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def note(self, text: str) -> None:
        self._erase()
        super().note(text)

    def _erase(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def render(self, now: float) -> None:
        ok, bad, wait = self.glyphs
        cols = shutil.get_terminal_size((100, 20)).columns
        lines = []
        for row in self.rows:
            if row.done:
                mark = self._paint("32", ok) if row.ok else self._paint("31", bad)
            else:
                mark = self._paint("33", wait)
            status = self._paint("1", f"{row.status:<18}")
            text = f" {mark} {row.label:<{self.width}}  {status} {row.detail}"
            lines.append(text if len(text) < cols + 20 else text[: cols + 16] + "...")
        done = sum(1 for r in self.rows if r.done)
        lines.append(self._paint("2", f"   {done}/{len(self.rows)} examples done, {now - self.t0:.1f}s"))
        self._erase()
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def close(self) -> None:
        self.out.write("\x1b[?25h")
        self.out.flush()


# -- the demo ------------------------------------------------------------------------------------


def _stop_worker(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_demo(*, keep: bool = False, plain: bool = False, timeout: float = 20.0, out: TextIO | None = None) -> int:
    """Run the demo; returns the exit status (0 when every example gave its expected outcome).

    :param keep: keep the temporary directory with the database and the worker's log.
    :param plain: line output even on a terminal.
    :param timeout: seconds to wait for all results.
    :param out: where to write (default stdout).
    """
    out = out or sys.stdout
    tmp = Path(tempfile.mkdtemp(prefix="machinery-demo-"))
    url = f"sqlite:///{tmp / 'demo.db'}"
    log_path = tmp / "worker.log"
    env = dict(os.environ, MACHINERY_DEFAULT_URL=url, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "machinery",
        "worker",
        "--app",
        "machinery_demo.app",
        "--concurrency",
        "8",
        "--loglevel",
        "info",
    ]
    t0 = time.monotonic()
    print(f"machinery demo: embedded queue {url}", file=out)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    print(f"worker started (pid {proc.pid}): {' '.join(cmd[1:])}", file=out)
    print("sending the examples...\n", file=out, flush=True)
    server = Server(Config(broker=url, result_backend=url))
    view: LineView | None = None
    ok = False
    worker_rc: int | None = None
    try:
        rows = send_examples(server)
        interactive = not plain and out.isatty() and os.environ.get("TERM") != "dumb"
        view = (TerminalView if interactive else LineView)(out, rows, t0)
        states: dict[str, TaskState | None] = {}
        deadline = time.monotonic() + timeout
        while True:
            # only the rows still moving are read again (through the public backend API)
            states.update((u, server.backend.get_state(u)) for r in rows if not r.done for u in r.uuids())
            now = time.monotonic()
            for row in rows:
                if not row.done:
                    row.update(states, now)
            view.render(now)
            if all(r.done for r in rows):
                break
            if proc.poll() is not None:
                view.note(f"\nthe worker exited early with status {proc.returncode}")
                break
            if now > deadline:
                view.note(f"\ntimed out after {timeout:g}s waiting for results")
                break
            time.sleep(POLL)
        view.close()
        view = None
        worker_rc = _stop_worker(proc)
        good = sum(1 for r in rows if r.done and r.ok)
        ok = good == len(rows) and worker_rc == 0
        print(
            f"\n{good}/{len(rows)} examples gave the expected result; "
            f"worker stopped with SIGTERM (exit status {worker_rc}); {time.monotonic() - t0:.1f}s in all",
            file=out,
        )
        for row in rows:
            if not (row.done and row.ok):
                print(f"  not as expected: {row.label}: {row.status} {row.detail} (expected {row.expect})", file=out)
    finally:
        if view is not None:
            view.close()
        if worker_rc is None:
            _stop_worker(proc)
        server.close()
        if not ok:
            tail = _tail(log_path)
            if tail:
                print(f"\nlast lines of the worker's log ({log_path}):\n{tail}", file=out)
        if keep or not ok:
            print(f"\ndatabase and worker log kept in {tmp}", file=out)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if ok:
        print(
            "\nNext: write your own tasks (see machinery_demo/app.py), run "
            "`machinery worker --app yourmodule`, and `machinery send add 1 2 --wait`.",
            file=out,
        )
    return 0 if ok else 1
