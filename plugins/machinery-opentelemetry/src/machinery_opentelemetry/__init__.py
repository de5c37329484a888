"""OpenTelemetry tracing for machinery: hookimpls only; the spans are made in
:mod:`machinery_opentelemetry.tracing`.

Installed, it traces every process that has a tracer provider configured (the OpenTelemetry
SDK, or ``opentelemetry-instrument``); without one, the API's no-op tracer makes it cost little.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from types import ModuleType

    from machinery.plugin import Signature, TaskEvent

__all__: list[str] = []


_loaded: ModuleType | None = None


def _tracing() -> ModuleType:
    # imported at first use (a process that never needs it does not load it), then kept: the
    # task hooks run for every task. (``from ... import`` waits for another thread's import.)
    global _loaded
    if _loaded is None:
        from machinery_opentelemetry import tracing

        _loaded = tracing
    return _loaded


@hookimpl
def machinery_before_publish(signature: Signature) -> None:
    """Start the PRODUCER span and inject its context into ``signature.headers``."""
    _tracing().before_publish(signature)


@hookimpl
def machinery_after_publish(signature: Signature, error: BaseException | None) -> None:
    """End the PRODUCER span (with the error, if publishing failed)."""
    _tracing().after_publish(signature, error)


@hookimpl
def machinery_task_started(event: TaskEvent) -> None:
    """Start the CONSUMER span, child of the sender's context, and make it current."""
    _tracing().task_started(event)


@hookimpl
def machinery_task_succeeded(event: TaskEvent) -> None:
    """End the CONSUMER span with state SUCCESS."""
    _tracing().task_ended(event, "SUCCESS")


@hookimpl
def machinery_task_failed(event: TaskEvent) -> None:
    """End the CONSUMER span with state FAILURE and the exception."""
    _tracing().task_ended(event, "FAILURE")


@hookimpl
def machinery_task_retried(event: TaskEvent) -> None:
    """End the CONSUMER span of this attempt with state RETRY."""
    _tracing().task_ended(event, "RETRY")
