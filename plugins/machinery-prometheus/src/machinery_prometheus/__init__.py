"""Prometheus metrics for machinery workers.

Install it and start a worker with ``machinery worker --metrics-port 9100`` (or set
``MACHINERY_METRICS_PORT``): the worker serves ``/metrics``. Producers with the plugin installed
stamp each message with a Python-only ``machinery_published_at`` header (Go ignores it), from
which the worker measures queue latency. See :mod:`machinery_prometheus.metrics`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    import argparse
    from types import ModuleType

    from machinery.plugin import Signature, TaskEvent, WorkerEvent

__all__ = ["PUBLISHED_AT_HEADER"]


_loaded: ModuleType | None = None


def _metrics() -> ModuleType:
    # imported at first use (a process that never needs it does not load it), then kept: the
    # task hooks run for every task. (``from ... import`` waits for another thread's import.)
    global _loaded
    if _loaded is None:
        from machinery_prometheus import metrics

        _loaded = metrics
    return _loaded


#: Header carrying the publish time (Unix seconds as a float); Python-only, Go ignores it.
PUBLISHED_AT_HEADER = "machinery_published_at"


@hookimpl
def machinery_cli_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-addr`` on ``machinery worker``."""
    if command == "worker":
        parser.add_argument(
            "--metrics-port",
            dest="prometheus_metrics_port",
            type=int,
            default=None,
            metavar="PORT",
            help="serve Prometheus /metrics on this port (machinery-prometheus; $MACHINERY_METRICS_PORT)",
        )
        parser.add_argument(
            "--metrics-addr",
            dest="prometheus_metrics_addr",
            default=None,
            metavar="ADDR",
            help="address of /metrics (default: $MACHINERY_METRICS_ADDR or 0.0.0.0)",
        )


@hookimpl
def machinery_cli_started(command: str, args: argparse.Namespace) -> None:
    """Remember ``--metrics-port``/``--metrics-addr`` for the worker about to start."""
    if command == "worker":
        from machinery_prometheus import metrics

        port = getattr(args, "prometheus_metrics_port", None)
        metrics.configure(port, getattr(args, "prometheus_metrics_addr", None))


@hookimpl
def machinery_before_publish(signature: Signature) -> None:
    """Stamp the publish time (for the worker's queue-latency histogram)."""
    signature.headers[PUBLISHED_AT_HEADER] = time.time()


@hookimpl
def machinery_worker_started(event: WorkerEvent) -> None:
    """Start serving ``/metrics`` when a port is configured."""
    from machinery_prometheus import metrics

    metrics.worker_started(event)


@hookimpl
def machinery_worker_stopped(event: WorkerEvent) -> None:
    """Stop serving ``/metrics``."""
    from machinery_prometheus import metrics

    metrics.worker_stopped(event)


@hookimpl
def machinery_task_started(event: TaskEvent) -> None:
    """In-flight +1 and queue latency."""
    _metrics().task_started(event)


@hookimpl
def machinery_task_succeeded(event: TaskEvent) -> None:
    """Count SUCCESS and observe the run time."""
    _metrics().task_finished(event, "SUCCESS")


@hookimpl
def machinery_task_failed(event: TaskEvent) -> None:
    """Count FAILURE and observe the run time."""
    _metrics().task_finished(event, "FAILURE")


@hookimpl
def machinery_task_retried(event: TaskEvent) -> None:
    """Count a retry."""
    _metrics().task_retried(event)
