"""The metrics and the ``/metrics`` server of a worker.

Metrics (label ``task`` is the task name):

- ``machinery_tasks_total{task, state}``: tasks that reached a final state (SUCCESS, FAILURE);
- ``machinery_task_retries_total{task}``: attempts that failed and were re-sent;
- ``machinery_task_runtime_seconds{task}``: histogram of attempt run times (started to final
  state or retry);
- ``machinery_tasks_in_progress{task}``: tasks running now;
- ``machinery_task_queue_latency_seconds{task}``: histogram of the wait from publication, or from
  the ETA when later, to the start. The publish time comes from the Python-only
  ``machinery_published_at`` header that producers with this plugin set; a task without it
  (sent by Go, or a producer without the plugin) is only measured from its ETA when it has one;
- ``machinery_queue_depth{queue}``: messages waiting in the worker's queue, read at scrape time
  when the broker declares ``supports_pending_listing`` (left out otherwise, and in
  multiprocess mode).

Multiprocess mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set (before the worker starts), every
worker process writes its samples there and ``/metrics`` serves the sum over all of them
(``prometheus_client.multiprocess``); the in-progress gauge uses ``livesum``. Empty the directory
between runs, as prometheus-client documents.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from machinery.plugin import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from machinery.plugin import TaskEvent, WorkerEvent

__all__ = ["configure", "task_finished", "task_retried", "task_started", "worker_started", "worker_stopped"]

log = logging.getLogger("machinery.prometheus")

TASKS = Counter("machinery_tasks", "Tasks that reached a final state.", ["task", "state"])
RETRIES = Counter("machinery_task_retries", "Task attempts that failed and were re-sent.", ["task"])
RUNTIME = Histogram("machinery_task_runtime_seconds", "Run time of task attempts.", ["task"])
IN_PROGRESS = Gauge("machinery_tasks_in_progress", "Tasks running now.", ["task"], multiprocess_mode="livesum")
LATENCY = Histogram(
    "machinery_task_queue_latency_seconds",
    "Time from publication (or ETA, when later) to the start of a task.",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, float("inf")),
)

_settings: dict[str, Any] = {"port": None, "addr": None}
_started: dict[str, float] = {}
_server: Any = None
_lock = threading.Lock()


def configure(port: int | None, addr: str | None) -> None:
    """Set the port and address of ``/metrics`` (from the command line); None keeps the
    environment's (``MACHINERY_METRICS_PORT``, ``MACHINERY_METRICS_ADDR``).

    :raises ConfigError: the port is not 0-65535 (``machinery`` exits 2 with one line).
    """
    if port is not None:
        if not 0 <= port <= 65535:
            raise ConfigError("--metrics-port", f"expected a port number 0-65535, got {port}")
        _settings["port"] = port
    if addr is not None:
        _settings["addr"] = addr


def _port() -> int | None:
    if _settings["port"] is not None:
        return int(_settings["port"])
    raw = os.environ.get("MACHINERY_METRICS_PORT", "")
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError("MACHINERY_METRICS_PORT", f"expected a port number 0-65535, got {raw!r}")
    return port


class QueueDepthCollector:
    """``machinery_queue_depth{queue}``, read from the broker at scrape time."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample: the number of messages waiting in the worker's queue."""
        broker = self.worker.server.broker
        family = GaugeMetricFamily("machinery_queue_depth", "Messages waiting in the queue.", labels=["queue"])
        try:
            family.add_metric([self.worker.queue], len(broker.pending_tasks(self.worker.queue)))
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the broker did
            log.warning("queue depth unavailable: %s", exc)
            return
        yield family


def _registry(event: WorkerEvent) -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    worker = event.worker
    if worker is not None and type(worker.server.broker).supports_pending_listing:
        registry = CollectorRegistry()
        registry.register(_Default())
        registry.register(QueueDepthCollector(worker))
        return registry
    return REGISTRY


class _Default:
    """The default registry's samples, in a registry of our own (beside the queue depth)."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def worker_started(event: WorkerEvent) -> None:
    """Start ``/metrics`` on the configured port, if any (once per process)."""
    global _server
    port = _port()
    if port is None:
        return
    with _lock:
        if _server is not None:
            return
        addr = _settings["addr"] or os.environ.get("MACHINERY_METRICS_ADDR", "") or "0.0.0.0"
        server, thread = start_http_server(port, addr=addr, registry=_registry(event))
        _server = (server, thread)
    log.info("serving Prometheus metrics on http://%s:%d/metrics", addr, server.server_port)


def worker_stopped(event: WorkerEvent) -> None:
    """Stop ``/metrics``."""
    global _server
    with _lock:
        if _server is None:
            return
        server, thread = _server
        _server = None
    server.shutdown()
    server.server_close()
    thread.join(5)


class _Children:
    """One task name's labelled children, looked up once (``labels()`` takes a lock and
    builds its key on every call)."""

    __slots__ = ("failure", "in_progress", "latency", "retries", "runtime", "success")

    def __init__(self, name: str) -> None:
        self.in_progress = IN_PROGRESS.labels(name)
        self.latency = LATENCY.labels(name)
        self.runtime = RUNTIME.labels(name)
        self.success = TASKS.labels(name, "SUCCESS")
        self.failure = TASKS.labels(name, "FAILURE")
        self.retries = RETRIES.labels(name)


_children: dict[str, _Children] = {}


def _of(name: str) -> _Children:
    children = _children.get(name)
    if children is None:
        # two threads may build it at once: labels() returns the same children to both
        children = _children[name] = _Children(name)
    return children


def task_started(event: TaskEvent) -> None:
    """In-flight +1; queue latency from the publish time or the ETA."""
    sig = event.signature
    children = _of(sig.name)
    now = time.time()
    _started[sig.uuid] = now
    children.in_progress.inc()
    since = None
    published = sig.headers.get("machinery_published_at")
    if isinstance(published, (int, float)) and not isinstance(published, bool):
        since = float(published)
    if sig.eta is not None:
        eta = sig.eta.timestamp()
        since = eta if since is None else max(since, eta)
    if since is not None:
        children.latency.observe(max(0.0, now - since))


def _end(event: TaskEvent) -> _Children | None:
    sig = event.signature
    t0 = _started.pop(sig.uuid, None)
    if t0 is None:  # failed before it started (bad arguments): nothing was running
        return None
    children = _of(sig.name)
    children.in_progress.dec()
    children.runtime.observe(event.runtime if event.runtime > 0 else time.time() - t0)
    return children


def task_finished(event: TaskEvent, state: str) -> None:
    """Count the final state and observe the run time."""
    children = _end(event)
    if children is None:
        children = _of(event.signature.name)
    if state == "SUCCESS":
        children.success.inc()
    elif state == "FAILURE":
        children.failure.inc()
    else:
        TASKS.labels(event.signature.name, state).inc()


def task_retried(event: TaskEvent) -> None:
    """Count a retry (the attempt ends here)."""
    children = _end(event)
    if children is None:
        children = _of(event.signature.name)
    children.retries.inc()
