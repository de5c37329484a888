"""Task rate limits: ``@server.task("name", rate_limit="10/s")``.

A limit ``N/period`` spaces the starts of a task ``period / N`` seconds apart across every
worker that shares the result backend (GCRA, the generic cell rate algorithm: the store keeps one
number per task, the *theoretical arrival time* of the next start). A worker about to run a
rate-limited task *reserves* the next slot in one atomic step (a Lua script on Redis, a write
transaction on SQLite, a lock on ``memory://``):

- a slot at most :data:`MAX_HOLD` seconds away is taken, and the worker holds the message that
  long (still unacknowledged) before running the task;
- a later slot is not taken: the message is given back to the broker with a delay until about
  then (``nack(requeue=True, delay=...)``), without touching its state or its retry count, and
  the task thread stays idle for :data:`MAX_HOLD` seconds (back-pressure, so a backlog of
  over-limit messages is not cycled through the queue at full speed).

Nothing is dropped, nothing counts as a retry, and no worker polls in a loop. A backend that does
not declare :attr:`~machinery.interfaces.Backend.supports_rate_limit` gets a per-worker limiter
instead: each worker then enforces the limit alone (``machinery plugins`` shows the capability,
and the worker logs a warning at start).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from machinery.interfaces import Backend

__all__ = ["MAX_HOLD", "LocalRateLimiter", "RateLimit", "RateLimiter"]

#: Longest wait, in seconds, for which a worker holds a message rather than giving it back.
MAX_HOLD = 1.0

_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_SPEC = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class RateLimit:
    """``count`` starts per ``period`` seconds.

    :param count: how many starts.
    :param period: per how many seconds.
    """

    count: float
    period: float

    def __post_init__(self) -> None:
        if not (self.count > 0 and self.period > 0):
            raise ValueError(f"a rate limit needs a positive count and period, got {self.count}/{self.period}s")

    @property
    def interval(self) -> float:
        """Seconds between two starts."""
        return self.period / self.count

    @classmethod
    def parse(cls, spec: str | RateLimit) -> RateLimit:
        """``"100/s"``, ``"10/m"``, ``"1000/h"`` (also ``sec``, ``min``, ``minute``, ``hour``).

        :raises ValueError: not a rate limit.
        """
        if isinstance(spec, RateLimit):
            return spec
        m = _SPEC.match(spec.lower()) if isinstance(spec, str) else None
        if m is None or m.group(2) not in _PERIODS:
            raise ValueError(f"rate_limit must look like '100/s', '10/m' or '1000/h', got {spec!r}")
        return cls(float(m.group(1)), _PERIODS[m.group(2)])

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(self.period, f"{self.period:g}s")
        return f"{self.count:g}/{unit}"


class LocalRateLimiter:
    """The same reservation in this process only (the ``memory://`` store and the per-worker
    fallback): a dict of theoretical arrival times under a lock, on the monotonic clock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def reserve(self, key: str, interval: float, max_wait: float) -> tuple[bool, float]:
        """See :meth:`Backend.rate_limit_reserve <machinery.interfaces.Backend.rate_limit_reserve>`."""
        now = time.monotonic()
        with self._lock:
            tat = max(self._tat.get(key, now), now)
            wait = tat - now
            if wait > max_wait:
                return False, wait
            self._tat[key] = tat + interval
            return True, wait


class RateLimiter:
    """A worker's limiter: the backend's shared one when it declares ``supports_rate_limit``,
    else a :class:`LocalRateLimiter`.

    :param backend: the result backend.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.shared = bool(type(backend).supports_rate_limit)
        self._local = LocalRateLimiter()

    def reserve(self, task_name: str, limit: RateLimit, max_wait: float = MAX_HOLD) -> tuple[bool, float]:
        """Reserve the next start of ``task_name``.

        :returns: ``(True, wait)``: run it after ``wait`` seconds; ``(False, wait)``: the next
            slot is ``wait`` seconds away, more than ``max_wait``: nothing was reserved.
        :raises BackendError: the shared store failed.
        """
        if self.shared:
            return self.backend.rate_limit_reserve(task_name, limit.interval, max_wait)
        return self._local.reserve(task_name, limit.interval, max_wait)
