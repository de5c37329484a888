"""OpenTelemetry tracing for machinery: hookimpls only; the spans are made in
:mod:`machinery_opentelemetry.tracing`.

Installed, it traces every process that has a tracer provider configured (the OpenTelemetry
SDK, or ``opentelemetry-instrument``); without one, the API's no-op tracer makes it cost little.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.events import TaskEvent
    from machinery.signature import Signature

__all__: list[str] = []


@hookimpl
def machinery_before_publish(signature: Signature) -> None:
    """Start the PRODUCER span and inject its context into ``signature.headers``."""
    from machinery_opentelemetry import tracing

    tracing.before_publish(signature)


@hookimpl
def machinery_after_publish(signature: Signature, error: BaseException | None) -> None:
    """End the PRODUCER span (with the error, if publishing failed)."""
    from machinery_opentelemetry import tracing

    tracing.after_publish(signature, error)


@hookimpl
def machinery_task_started(event: TaskEvent) -> None:
    """Start the CONSUMER span, child of the sender's context, and make it current."""
    from machinery_opentelemetry import tracing

    tracing.task_started(event)


@hookimpl
def machinery_task_succeeded(event: TaskEvent) -> None:
    """End the CONSUMER span with state SUCCESS."""
    from machinery_opentelemetry import tracing

    tracing.task_ended(event, "SUCCESS")


@hookimpl
def machinery_task_failed(event: TaskEvent) -> None:
    """End the CONSUMER span with state FAILURE and the exception."""
    from machinery_opentelemetry import tracing

    tracing.task_ended(event, "FAILURE")


@hookimpl
def machinery_task_retried(event: TaskEvent) -> None:
    """End the CONSUMER span of this attempt with state RETRY."""
    from machinery_opentelemetry import tracing

    tracing.task_ended(event, "RETRY")
