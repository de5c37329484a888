"""Every hook a machinery plugin can implement.

Transport hooks *register* classes (1:1 per URL scheme); behaviour lives in the ABCs of
:mod:`machinery.interfaces`. Lifecycle hooks are broadcast observers that return None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from machinery.events import TaskEvent, WorkerEvent
    from machinery.plugins import Register

__all__ = ["hookspec"]

hookspec = pluggy.HookspecMarker("machinery")


@hookspec
def machinery_register_brokers(register: Register) -> None:
    """Register broker classes for URL schemes.

    Called once per process, on the first URL resolution (plugins load lazily), for every
    plugin. Call ``register(scheme, cls)`` once per scheme; ``cls`` is a
    :class:`~machinery.interfaces.Broker` subclass or a ``"module:Class"`` string imported only
    when a URL with that scheme is used. A scheme claimed by two distributions is an error
    naming both.

    :param register: the registration callback.
    """


@hookspec
def machinery_register_backends(register: Register) -> None:
    """Register result backend classes for URL schemes.

    Called once per process, on the first URL resolution, like
    :func:`machinery_register_brokers` and with the same rules; ``cls`` is a
    :class:`~machinery.interfaces.Backend` subclass or a ``"module:Class"`` string.

    :param register: the registration callback.
    """


@hookspec
def machinery_register_locks(register: Register) -> None:
    """Register lock classes for URL schemes.

    Called once per process, on the first URL resolution, like
    :func:`machinery_register_brokers` and with the same rules; ``cls`` is a
    :class:`~machinery.interfaces.Lock` subclass or a ``"module:Class"`` string.

    :param register: the registration callback.
    """


@hookspec
def machinery_task_received(event: TaskEvent) -> None:
    """A worker took a task message and stored RECEIVED.

    Called in the worker thread that will run the task, once per delivery (so again after a
    redelivery). Must be quick and must not raise: exceptions are logged and ignored.

    :param event: what happened; ``event.signature`` is the decoded task.
    """


@hookspec
def machinery_task_started(event: TaskEvent) -> None:
    """A task function is about to run (STARTED is stored).

    Called in the task's worker thread, once per attempt.

    :param event: what happened.
    """


@hookspec
def machinery_task_succeeded(event: TaskEvent) -> None:
    """A task returned and SUCCESS is stored.

    Called in the task's worker thread, before its callbacks are sent.

    :param event: ``event.results`` holds the typed results, ``event.runtime`` the seconds taken.
    """


@hookspec
def machinery_task_failed(event: TaskEvent) -> None:
    """A task failed for good (FAILURE is stored), or could not run at all.

    Called in the task's worker thread; ``event.exc`` is the exception, ``event.error`` the
    string stored, ``event.traceback`` the formatted traceback when the task raised.

    :param event: what happened.
    """


@hookspec
def machinery_task_retried(event: TaskEvent) -> None:
    """A task failed and was re-sent for a later attempt (RETRY is stored).

    Called in the task's worker thread; ``event.retry_in`` holds the delay in seconds.

    :param event: what happened.
    """


@hookspec
def machinery_worker_started(event: WorkerEvent) -> None:
    """A worker began consuming.

    Called once per :meth:`~machinery.worker.Worker.launch`, in the launching thread.

    :param event: the worker's consumer tag, queue, concurrency and redacted URLs.
    """


@hookspec
def machinery_worker_stopped(event: WorkerEvent) -> None:
    """A worker stopped consuming and finished its in-flight tasks.

    Called once per launch, from the thread that ran the worker, after its task threads ended.

    :param event: the worker's consumer tag, queue, concurrency and redacted URLs.
    """
