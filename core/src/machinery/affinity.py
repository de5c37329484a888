"""Keep a worker's threads on one CPU: ``--cpu-affinity`` (config ``worker_cpu_affinity``).

CPython runs one thread's Python at a time (the GIL). A worker's threads (the consumer, the
task threads, the store's batcher) hand the GIL to one another many times per task, and on a
machine with idle cores the kernel wakes the thread that waits for it on another core: each
hand-off then crosses cores (a wake-up by inter-processor interrupt, the GIL's cache lines
moving over). Kept on one CPU, the same hand-offs are plain context switches. On the 2-core
machine of ``benchmarks/RESULTS.md`` that took the worker's CPU per no-op task down by 10 to
40 % and its drain up by 10 to 90 % (docs/worker.md has the figures).

It is off by default, because a process confined to one CPU gives up the other cores for
everything that runs outside the GIL: C code that releases it (NumPy, hashing, compression)
and the child processes its tasks start, which inherit the CPU (``subprocess`` does not reset
it). The processes pool's children are reset to the CPUs the worker had before.

- ``auto``: one CPU, chosen by the worker: the idlest one (``/proc/stat`` over 50 ms) not
  claimed by another worker of this user on this machine (a lock held on a file under
  ``$XDG_RUNTIME_DIR`` or the temporary directory, for as long as the worker runs); when every
  CPU is claimed, the idlest one is shared. Nothing is done where there is one CPU, where the
  GIL is off (a free-threaded build: its threads run in parallel) or where the platform has no
  ``sched_setaffinity`` (a warning says so).
- a CPU list such as ``0``, ``2-3`` or ``0,4``: those CPUs, which must be among those the
  process may use.
- ``""`` (also ``none`` or ``off``): the kernel decides, as for any process.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import IO, TYPE_CHECKING

from machinery.errors import ConfigError
from machinery.settings import AUTO, cpu_list

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["AUTO", "Pinned", "pin_worker"]

log = logging.getLogger("machinery.worker")


class Pinned:
    """What :func:`pin_worker` did: the CPUs the worker's threads now run on, those the process
    had before (:attr:`original`, which the processes pool's children get back), and the claim
    on the CPU (``auto``), held until :meth:`undo`."""

    def __init__(self, cpus: frozenset[int], original: frozenset[int], claim: IO[str] | None) -> None:
        self.cpus = cpus
        self.original = original
        self._claim = claim

    def undo(self) -> None:
        """Give every thread of the process its CPUs back and release the claim (a worker
        stopped inside a longer-lived process: the rest of the program runs as before)."""
        _set_all_threads(self.original)
        if self._claim is not None:
            self._claim.close()
            self._claim = None

    def __repr__(self) -> str:
        return f"Pinned(cpus={sorted(self.cpus)}, original={sorted(self.original)})"


def pin_worker(setting: str) -> Pinned | None:
    """Confine every thread of this process, and those it starts later, to the CPUs of
    ``setting`` (:func:`parse_cpu_affinity`'s form); None when nothing was done.

    :raises ConfigError: a CPU list names a CPU this process may not use.
    """
    if not setting:
        return None
    if not hasattr(os, "sched_setaffinity"):
        log.warning("--cpu-affinity %s: this platform cannot set a thread's CPUs; ignored", setting)
        return None
    original = frozenset(os.sched_getaffinity(0))
    claim: IO[str] | None = None
    if setting == AUTO:
        if not getattr(sys, "_is_gil_enabled", lambda: True)():
            log.info("--cpu-affinity auto: the GIL is off, the threads run in parallel; not pinned")
            return None
        if len(original) < 2:
            return None
        cpu, claim = _choose(original)
        cpus = frozenset({cpu})
    else:
        cpus = cpu_list(setting)
        if not cpus <= original:
            outside = ",".join(map(str, sorted(cpus - original)))
            allowed = ",".join(map(str, sorted(original)))
            raise ConfigError("worker_cpu_affinity", f"CPU {outside} is not one this process may use ({allowed})")
    _set_all_threads(cpus)
    log.info("worker threads kept on CPU %s (--cpu-affinity %s)", ",".join(map(str, sorted(cpus))), setting)
    return Pinned(cpus, original, claim)


def _set_all_threads(cpus: frozenset[int]) -> None:
    # sched_setaffinity sets one thread's CPUs: every thread already running (a plugin's, the
    # scheduler's, this one) is set by its thread id; threads started later inherit.
    try:
        tids = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the threads Python knows of
        tids = [t.native_id for t in threading.enumerate() if t.native_id is not None]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass  # the thread ended meanwhile


def _idlest(cpus: frozenset[int], window: float = 0.05) -> list[int]:
    # The CPUs ordered by their idle time over ``window`` seconds (Linux /proc/stat), idlest first.
    def idle() -> dict[int, int]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *ticks = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    out[int(name[3:])] = int(ticks[3]) + int(ticks[4])  # idle + iowait
        return out

    try:
        before = idle()
        time.sleep(window)
        after = idle()
    except (OSError, ValueError, IndexError):
        return sorted(cpus)
    return sorted(cpus, key=lambda c: (-(after.get(c, 0) - before.get(c, 0)), c))


def _claims_dir() -> Path | None:
    import tempfile
    from pathlib import Path

    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"machinery-cpus-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        if path.stat().st_uid != os.getuid():
            return None  # not ours: claims there would mean nothing
    except OSError:
        return None
    return path


def _choose(allowed: frozenset[int]) -> tuple[int, IO[str] | None]:
    # The idlest CPU that no other worker of this user claims (a lock on a file, held while the
    # worker runs and released by the kernel if it dies); the idlest one if all are claimed.
    import fcntl

    order = _idlest(allowed)
    where = _claims_dir()
    if where is not None:
        for cpu in order:
            try:
                f = open(where / f"cpu{cpu}", "a")  # noqa: SIM115 - held by the Pinned
            except OSError:
                break
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            return cpu, f
    return order[0], None
