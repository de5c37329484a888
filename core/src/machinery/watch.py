"""Follow running tasks until they end: a live progress bar per task on a terminal, plain lines
otherwise (what ``machinery watch`` draws).

>>> from machinery.watch import watch                            # doctest: +SKIP
>>> ok = watch(server.send_group(group))                           # doctest: +SKIP

Each member of a group, chain or chord result gets its own line (a chord: the group's members,
then the callback).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from machinery.results import AsyncResult
    from machinery.state import TaskState

__all__ = ["WatchTimeout", "expand", "render_line", "watch"]

_BAR = 24


class WatchTimeout(Exception):
    """``watch`` ran out of time before every task ended."""


def expand(results: Any) -> list[AsyncResult]:
    """The single-task results inside ``results``: an :class:`AsyncResult`, a group, chain or
    chord result, or an iterable of any of these."""
    from machinery.results import AsyncResult, ChainAsyncResult, ChordAsyncResult

    if isinstance(results, AsyncResult):
        return [results]
    if isinstance(results, ChainAsyncResult):
        return list(results.async_results)
    if isinstance(results, ChordAsyncResult):
        return [*results.group_results, results.callback_result]
    if isinstance(results, Iterable) and not isinstance(results, (str, bytes)):
        return [r for item in results for r in expand(item)]
    raise TypeError(f"cannot watch {type(results).__name__}")


def _bar(fraction: float | None, state: str) -> str:
    if state == "SUCCESS":
        fraction = 1.0
    if fraction is None:
        return "[" + ("?" * _BAR if state == "STARTED" else "." * _BAR) + "]"
    filled = round(fraction * _BAR)
    return "[" + "#" * filled + "." * (_BAR - filled) + "]"


def render_line(uuid: str, state: TaskState | None, *, bar: bool, width: int = 0) -> str:
    """One line for one task: ``[#####...] 30% STARTED name uuid 3/10 info`` (with ``bar``) or
    ``uuid name STATE 3/10 (30%) info``."""
    if state is None:
        text = f"{uuid} NO STATE (not sent yet, never sent, expired or purged)"
        return text[:width] if width else text
    name = state.task_name or "?"
    progress = state.progress
    detail = ""
    if state.is_failure:
        detail = f"error: {state.error}"
    elif progress is not None:
        detail = progress.describe()
    if bar:
        frac = progress.fraction if progress is not None else None
        pct = "100%" if state.is_success else (f"{frac * 100:3.0f}%" if frac is not None else "  ?%")
        text = f"{_bar(frac, state.state)} {pct} {state.state:<8} {name} {uuid}"
    else:
        text = f"{uuid} {name} {state.state}"
    if detail:
        text += f"  {detail}"
    return text[:width] if width and len(text) > width else text


def watch(
    results: Any,
    *,
    interval: float = 0.5,
    timeout: float | None = None,
    out: TextIO | None = None,
    tty: bool | None = None,
    grace: float = 2.0,
) -> bool:
    """Draw the tasks' progress until every one is SUCCESS or FAILURE (or has no state).

    On a terminal (``tty`` None: ``out.isatty()``) the lines are redrawn in place; otherwise a
    line is printed each time a task's state or progress changes.

    :param results: what :func:`expand` accepts.
    :param interval: seconds between two reads of the backend.
    :param timeout: give up after this many seconds (None: wait as long as it takes).
    :param grace: once every task with a state has ended, how long to wait for those with none
        (a chain step or chord callback not sent yet) before counting them as never run.
    :returns: True when every task succeeded.
    :raises WatchTimeout: ``timeout`` passed first.
    """
    members = expand(results)
    out = out if out is not None else sys.stdout
    if tty is None:
        tty = bool(getattr(out, "isatty", lambda: False)())
    width = _columns() - 1 if tty else 0
    deadline = None if timeout is None else time.monotonic() + timeout
    last: list[str | None] = [None] * len(members)
    drawn = 0
    settled: float | None = None
    while True:
        states = [_read(r) for r in members]
        lines = [render_line(r.task_uuid, st, bar=tty, width=width) for r, st in zip(members, states)]
        if tty:
            if drawn:
                out.write(f"\x1b[{drawn}F")
            out.write("".join(f"\x1b[2K{line}\n" for line in lines))
            drawn = len(lines)
        else:
            for i, line in enumerate(lines):
                if line != last[i]:
                    out.write(line + "\n")
                    last[i] = line
        out.flush()
        if all(st is None or st.is_completed for st in states):
            # A task with no state yet may be a chain step or chord callback not sent yet: it
            # is sent right after the step before it is stored, so a short grace tells.
            if all(st is not None for st in states) or (settled is not None and time.monotonic() - settled >= grace):
                return all(st is not None and st.is_success for st in states)
            if settled is None:
                settled = time.monotonic()
        else:
            settled = None
        if deadline is not None and time.monotonic() >= deadline:
            raise WatchTimeout(f"{sum(1 for s in states if s is None or not s.is_completed)} task(s) still running")
        pause = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
        time.sleep(pause)


def _read(result: AsyncResult) -> TaskState | None:
    st = result._backend.get_state(result.task_uuid)
    return st


def _columns() -> int:
    import os

    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 100
