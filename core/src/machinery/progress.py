"""Task progress: what a running task reports with :meth:`TaskContext.report_progress
<machinery.task.TaskContext.report_progress>` and what :attr:`AsyncResult.progress
<machinery.results.AsyncResult.progress>` reads back.

Progress travels with the task's stored state, through each backend's ordinary state storage:
a report stores the task's STARTED state again, with one extra JSON key, ``Progress``::

    {"TaskUUID":"…","TaskName":"resize","State":"STARTED","Results":null,"Error":"",
     "CreatedAt":"…","TTL":0,"Progress":{"Done":3,"Total":10,"Info":"page 3","UpdatedAt":"…"}}

Go's JSON decoder ignores keys its ``TaskState`` has no field for, so a Go reader sees a plain
STARTED state; a task that never reports progress is stored byte for byte as before (the key
is written only when there is progress). The final state (SUCCESS or FAILURE) replaces the
record and carries no progress: :attr:`AsyncResult.progress` is then None and the result
itself is what counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from machinery.wire.gotypes import format_time, parse_time

if TYPE_CHECKING:
    from collections.abc import Mapping

    from machinery.interfaces import Backend
    from machinery.signature import Signature

__all__ = ["Progress", "report_progress"]

#: The JSON key of the stored state that holds progress (Go's decoder ignores it).
PROGRESS_KEY = "Progress"


def _number(name: str, value: Any, *, positive: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"progress {name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"progress {name} must be finite, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"progress {name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a running task has come.

    :param done: units of work done (a count, bytes, percent...: the task chooses).
    :param total: units in all, when known (None: open-ended).
    :param info: any JSON value the task attaches (a message, the current item...).
    :param updated_at: when the task reported it (UTC).
    """

    done: int | float
    total: int | float | None = None
    info: Any = None
    updated_at: datetime | None = None

    @property
    def fraction(self) -> float | None:
        """``done / total`` clamped to 0..1, or None when the total is unknown."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    def to_wire(self) -> dict[str, Any]:
        """The JSON object stored under the state's ``Progress`` key."""
        out: dict[str, Any] = {"Done": self.done, "Total": self.total, "Info": self.info}
        if self.updated_at is not None:
            out["UpdatedAt"] = format_time(self.updated_at)
        return out

    @classmethod
    def from_wire(cls, raw: Any) -> Progress | None:
        """Read a stored ``Progress`` object; None when absent or not readable (a record
        written by something else is never an error: it just has no progress)."""
        if not isinstance(raw, dict):
            return None
        d = {str(k).lower(): v for k, v in raw.items()}
        done, total = d.get("done"), d.get("total")
        if isinstance(done, bool) or not isinstance(done, (int, float)):
            return None
        if total is not None and (isinstance(total, bool) or not isinstance(total, (int, float))):
            total = None
        updated: datetime | None = None
        when = d.get("updatedat", d.get("updated_at"))
        if isinstance(when, datetime):
            updated = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        elif isinstance(when, str):
            try:
                updated = parse_time(when)
            except ValueError:
                updated = None
        return cls(done=done, total=total, info=d.get("info"), updated_at=updated)

    def describe(self) -> str:
        """``3/10 (30%) page 3``: one line for people."""
        done = _fmt(self.done)
        text = f"{done}/{_fmt(self.total)}" if self.total else done
        frac = self.fraction
        if frac is not None:
            text += f" ({frac * 100:.0f}%)"
        if self.info is not None and self.info != "":
            text += f" {self.info if isinstance(self.info, str) else _json(self.info)}"
        return text


def _fmt(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x:g}" if isinstance(x, float) else str(x)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def check_info(info: Any) -> None:
    """Refuse an ``info`` that cannot be stored as JSON (before anything is written)."""
    import json

    try:
        json.dumps(info, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"progress info must be a JSON value (str, number, list, dict...): {exc}") from None


def report_progress(
    backend: Backend,
    signature: Signature,
    done: float,
    total: float | None = None,
    info: Any = None,
) -> Progress:
    """Store the task's STARTED state with ``Progress`` (one backend write).

    :raises TypeError: ``done``/``total`` is not a number, or ``info`` not JSON.
    :raises ValueError: a negative or non-finite number, or ``total`` of 0.
    :raises machinery.errors.BackendError: the backend could not store it.
    """
    from machinery.state import State

    done = _number("done", done, positive=False)
    if total is not None:
        total = _number("total", total, positive=True)
    check_info(info)
    progress = Progress(done=done, total=total, info=info, updated_at=datetime.now(timezone.utc))
    backend._store_state(backend._state(signature, State.STARTED.value, progress=progress))
    return progress


def progress_from_mapping(d: Mapping[str, Any]) -> Progress | None:
    """The progress in a decoded state mapping (any key case), or None."""
    for k, v in d.items():
        if isinstance(k, str) and k.lower() == "progress":
            return Progress.from_wire(v)
    return None
