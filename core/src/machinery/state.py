"""Task states, task results and group metadata, as stored by result backends.

These are plain Python objects; their Go wire form (``TaskUUID``, ``Results``...) lives in
:mod:`machinery.wire` and nowhere else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from machinery.progress import Progress

__all__ = [
    "DEFAULT_RESULTS_EXPIRE_IN",
    "KEEP_RESULTS_FOREVER",
    "ZERO_TIME",
    "GroupMeta",
    "State",
    "TaskResult",
    "TaskState",
    "results_lifetime",
]

#: Go's zero ``time.Time`` (``0001-01-01T00:00:00Z``), used where a record has no timestamp.
ZERO_TIME = datetime(1, 1, 1, tzinfo=timezone.utc)

#: Go's ``config.DefaultResultsExpireIn``: the lifetime ``results_expire_in: 0`` means (Go's
#: ``getExpiration`` in every result backend).
DEFAULT_RESULTS_EXPIRE_IN = 3600
#: ``results_expire_in: -1``: keep results forever (a Python-only spelling; Go has none).
KEEP_RESULTS_FOREVER = -1


def results_lifetime(results_expire_in: int) -> int | None:
    """Seconds results live for a ``results_expire_in`` value: 0 is Go's default 3600 s, -1
    (:data:`KEEP_RESULTS_FOREVER`) is None (never expire), anything else is itself."""
    if results_expire_in == 0:
        return DEFAULT_RESULTS_EXPIRE_IN
    if results_expire_in < 0:
        return None
    return results_expire_in


class State(str, enum.Enum):
    """The six task states, spelled as Go Machinery stores them."""

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"

    def __str__(self) -> str:
        return self.value


_COMPLETED = frozenset({"SUCCESS", "FAILURE"})


@dataclass(slots=True)
class TaskResult:
    """One return value of a task with its Go type name (``int64``, ``[]string``...).

    :param type: the Go type name, as Go's ``reflect.Type.String()`` spells it.
    :param value: the Python value.
    """

    type: str
    value: Any


@dataclass(slots=True)
class TaskState:
    """The stored state of one task (Go's ``TaskState``).

    :param task_uuid: the task's UUID.
    :param state: one of the six :class:`State` values.
    :param task_name: the task's name (Go writes it with the PENDING state only).
    :param results: the results, for SUCCESS.
    :param error: the error string, for FAILURE.
    :param created_at: when this record was created (Go's zero time when unknown).
    :param ttl: expiry in seconds as Go stores it (0 = none).
    :param progress: what the running task last reported (Python only: stored under an extra
        ``Progress`` key Go ignores, and only when set; see :mod:`machinery.progress`).
    """

    task_uuid: str
    state: str
    task_name: str = ""
    results: list[TaskResult] | None = None
    error: str = ""
    created_at: datetime = ZERO_TIME
    ttl: int = 0
    progress: Progress | None = None

    @property
    def is_completed(self) -> bool:
        """True for SUCCESS or FAILURE: the task will not run again."""
        return self.state in _COMPLETED

    @property
    def is_success(self) -> bool:
        """True when the task succeeded."""
        return self.state == "SUCCESS"

    @property
    def is_failure(self) -> bool:
        """True when the task failed for good."""
        return self.state == "FAILURE"

    @property
    def values(self) -> list[Any]:
        """The Python values of :attr:`results`, in order."""
        return [r.value for r in self.results or ()]


@dataclass(slots=True)
class GroupMeta:
    """Metadata of a group (Go's ``GroupMeta``): its tasks and whether its chord fired.

    :param group_uuid: the group's UUID.
    :param task_uuids: the member tasks, in group order.
    :param chord_triggered: set once, atomically, when the chord callback is sent.
    :param lock: Go's lock flag (kept for wire compatibility).
    :param created_at: creation time.
    :param ttl: expiry in seconds as Go stores it (0 = none).
    """

    group_uuid: str
    task_uuids: list[str] = field(default_factory=list)
    chord_triggered: bool = False
    lock: bool = False
    created_at: datetime = ZERO_TIME
    ttl: int = 0
