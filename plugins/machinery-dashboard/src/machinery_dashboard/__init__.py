"""machinery-dashboard: a live web dashboard for machinery, with workflows drawn as graphs.

Installed in workers, its hooks record task events into a capped, expiring log next to the
result backend's data (:mod:`machinery_dashboard.recorder`, :mod:`machinery_dashboard.store`).
Installed where you look, ``machinery dashboard`` serves the pages
(:mod:`machinery_dashboard.app`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from machinery.plugin import TaskEvent, WorkerEvent
    from machinery_dashboard.recorder import Recorder

__all__: list[str] = []

#: consumer tag -> recorder (the recorder module's table, once a worker started)
_recorders: dict[str, Recorder] = {}


@hookimpl
def machinery_cli_commands(add_command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """``machinery dashboard``."""
    from machinery_dashboard.cli import add_arguments

    add_arguments(add_command("dashboard", "serve the live web dashboard (machinery-dashboard)"))


@hookimpl
def machinery_worker_started(event: WorkerEvent) -> None:
    """Attach the events recorder to the worker."""
    global _recorders
    from machinery_dashboard import recorder

    recorder.start(event)
    _recorders = recorder._recorders


@hookimpl
def machinery_worker_stopped(event: WorkerEvent) -> None:
    """Flush and detach the events recorder."""
    from machinery_dashboard import recorder

    recorder.stop(event)


def _record(kind: str, event: TaskEvent) -> None:
    rec = _recorders.get(event.consumer_tag)
    if rec is not None:
        rec.task_event(kind, event)


@hookimpl
def machinery_task_succeeded(event: TaskEvent) -> None:
    """Record SUCCESS, with the results and run time."""
    _record("S", event)


@hookimpl
def machinery_task_failed(event: TaskEvent) -> None:
    """Record FAILURE, with the error and traceback."""
    _record("F", event)


@hookimpl
def machinery_task_retried(event: TaskEvent) -> None:
    """Record RETRY."""
    _record("Y", event)
