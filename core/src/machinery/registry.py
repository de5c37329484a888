"""The live worker registry: each worker announces itself with a heartbeat.

A worker whose backend declares :attr:`~machinery.interfaces.Backend.supports_worker_registry`
writes a :class:`WorkerInfo` record (JSON, Python-only: Go never reads it) every
``heartbeat`` seconds with an expiry of ``heartbeat * HEARTBEAT_EXPIRY`` seconds, and deletes it
when it stops. A worker that dies stops refreshing it, so it disappears within that expiry.
``machinery inspect workers`` and ``machinery ping`` read the live records.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from machinery.errors import ConfigError, DecodeError

if TYPE_CHECKING:
    from collections.abc import Callable

    from machinery.interfaces import Backend

__all__ = ["DEFAULT_HEARTBEAT", "HEARTBEAT_EXPIRY", "Heartbeat", "WorkerInfo", "live_workers"]

log = logging.getLogger("machinery.registry")

#: Seconds between two announcements of a worker (``MACHINERY_WORKER_HEARTBEAT`` overrides it).
DEFAULT_HEARTBEAT = 5.0
#: A record expires after this many missed heartbeats.
HEARTBEAT_EXPIRY = 3


def heartbeat_interval() -> float:
    """The heartbeat in effect: ``$MACHINERY_WORKER_HEARTBEAT`` seconds, else :data:`DEFAULT_HEARTBEAT`.

    :raises ConfigError: the variable is not a positive number.
    """
    raw = os.environ.get("MACHINERY_WORKER_HEARTBEAT", "")
    if not raw:
        return DEFAULT_HEARTBEAT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ConfigError("MACHINERY_WORKER_HEARTBEAT", f"expected a positive number of seconds, got {raw!r}")
    return value


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as the registry shows it.

    :param worker_id: unique per worker process and launch (``host:pid:tag:random``).
    :param consumer_tag: the worker's consumer tag.
    :param host: the machine's host name.
    :param pid: the worker's process id.
    :param queues: the queues it consumes.
    :param concurrency: its number of task threads.
    :param pool: the kind of pool (``"threads"``).
    :param started: when it started (Unix time).
    :param heartbeat: when this record was written (Unix time).
    :param interval: the heartbeat interval in seconds.
    :param tasks_done: tasks it completed with SUCCESS.
    :param tasks_failed: tasks it completed with FAILURE.
    :param current: the tasks running now: ``{"uuid", "name", "started"}`` each.
    :param version: the machinery-core version.
    """

    worker_id: str
    consumer_tag: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    pool: str = "threads"
    started: float = 0.0
    heartbeat: float = 0.0
    interval: float = DEFAULT_HEARTBEAT
    tasks_done: int = 0
    tasks_failed: int = 0
    current: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    version: str = ""

    def to_json(self) -> bytes:
        """The record as stored (UTF-8 JSON)."""
        return json.dumps(asdict(self), separators=(",", ":")).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain mapping (for ``--json`` output)."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerInfo:
        """Decode a stored record.

        :raises DecodeError: it is not a worker record.
        """
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        try:
            obj = json.loads(data)
            obj["queues"] = tuple(obj.get("queues", ()))
            obj["current"] = tuple(obj.get("current", ()))
            return cls(**obj)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DecodeError(data, f"not a worker record: {exc}") from None


def live_workers(backend: Backend, queue: str | None = None) -> list[WorkerInfo]:
    """The workers whose record has not expired, oldest first; only those consuming ``queue``
    when it is given. Records that cannot be decoded are skipped with a warning.

    :raises NotImplementedError: the backend has no worker registry.
    """
    out: list[WorkerInfo] = []
    for raw in backend.list_workers():
        try:
            info = WorkerInfo.from_json(raw)
        except DecodeError as exc:
            log.warning("skipping a worker record: %s", exc.reason)
            continue
        if queue is None or queue in info.queues:
            out.append(info)
    out.sort(key=lambda w: (w.started, w.worker_id))
    return out


class Heartbeat:
    """Announces one worker until stopped (a daemon thread).

    :param backend: the backend holding the registry.
    :param snapshot: returns the worker's current record (called at every beat).
    :param interval: seconds between announcements; the record expires after
        ``interval * HEARTBEAT_EXPIRY``.
    """

    def __init__(self, backend: Backend, snapshot: Callable[[], WorkerInfo], interval: float) -> None:
        self.backend = backend
        self.snapshot = snapshot
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker_id = ""

    @property
    def ttl(self) -> timedelta:
        """How long one announcement stays visible."""
        return timedelta(seconds=self.interval * HEARTBEAT_EXPIRY)

    def beat(self) -> None:
        """Announce once now (errors are logged: a registry outage must not stop the worker)."""
        try:
            info = self.snapshot()
            self._worker_id = info.worker_id
            self.backend.register_worker(info.worker_id, info.to_json(), self.ttl)
        except Exception as exc:  # noqa: BLE001 - best effort, retried at the next beat
            log.warning("could not announce the worker in the registry: %s", exc)

    def start(self) -> None:
        """Announce now, then every ``interval`` seconds in a daemon thread."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="machinery-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        """Stop announcing and delete the record at once. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
            self._thread = None
        if self._worker_id:
            try:
                self.backend.unregister_worker(self._worker_id)
            except Exception as exc:  # noqa: BLE001 - it expires anyway
                log.warning("could not remove the worker from the registry (it expires): %s", exc)
            self._worker_id = ""


def new_worker_id(consumer_tag: str) -> str:
    """A worker id unique across machines and restarts: ``host:pid:tag:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{consumer_tag}:{os.urandom(3).hex()}"


def now() -> float:
    """Unix time (a helper so records use one clock)."""
    return time.time()
