"""Event objects passed to the lifecycle hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from machinery.signature import Signature
    from machinery.state import TaskResult
    from machinery.worker import Worker

__all__ = ["TaskEvent", "WorkerEvent"]


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something happened to a task in a worker.

    :param signature: the task.
    :param consumer_tag: the worker's consumer tag.
    :param results: typed results (``task_succeeded``).
    :param error: the error string stored (``task_failed``/``task_retried``).
    :param exc: the exception, when there is one.
    :param traceback: the formatted traceback when the task raised.
    :param runtime: seconds the task function ran.
    :param retry_in: seconds until the next attempt (``task_retried``).
    """

    signature: Signature
    consumer_tag: str = ""
    results: list[TaskResult] = field(default_factory=list)
    error: str = ""
    exc: BaseException | None = None
    traceback: str = ""
    runtime: float = 0.0
    retry_in: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """A worker started or stopped.

    :param consumer_tag: the worker's consumer tag.
    :param queue: the queue it consumes.
    :param concurrency: its concurrency.
    :param broker: the broker URL, credentials redacted.
    :param backend: the backend URL, credentials redacted.
    :param tasks: the registered task names.
    :param worker: the worker itself (None when an event is built elsewhere).
    """

    consumer_tag: str
    queue: str
    concurrency: int
    broker: str
    backend: str
    tasks: tuple[str, ...] = ()
    worker: Worker | None = field(default=None, compare=False, repr=False)
