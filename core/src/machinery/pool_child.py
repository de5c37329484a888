"""The processes pool's child program (:mod:`machinery.pool`): import the app, then run the
supervisor's task calls until it says stop.

A module of its own, above :mod:`machinery.worker` and :mod:`machinery.pool`: it loads the app
with :func:`machinery.cli_common.load_app` and builds the :class:`~machinery.Server` its task
contexts carry. The supervisor only names it (:data:`machinery.pool.CHILD_MAIN`); a spawned
child imports it as its program.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from machinery.errors import SoftTimeLimitExceeded
from machinery.pool import ChildTaskError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from machinery.config import Config

__all__ = ["child_main"]

_soft_limit = 0.0
_running = False


def _on_sigusr1(signum: int, frame: object) -> None:
    if _running:
        raise SoftTimeLimitExceeded(_soft_limit)


def _die_with_parent() -> None:
    # A thread that ends the child once its supervisor is gone (SIGKILL, OOM), whatever the
    # child is doing. Not PR_SET_PDEATHSIG: that fires when the *thread* that started the
    # child ends, and children are started from task threads and from launch's caller.
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="machinery-parent-watch", daemon=True).start()


def _rss_kib() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def child_main(
    app: str,
    config: Config,
    conn: Connection,
    consumer_tag: str,
    level: int,
    measure: bool,
    cpus: frozenset[int] | None = None,
) -> None:
    """A child's main loop: import the app, then run ``(name, values, body, soft)`` requests
    until ``None`` or the pipe closes. Not for direct use. ``cpus``: the CPUs to run on (those
    the supervisor had before it kept its own threads on one, ``--cpu-affinity``)."""
    global _soft_limit, _running
    if cpus:  # before any thread: they inherit it
        os.sched_setaffinity(0, cpus)
    # Ctrl-C reaches the whole process group, and systemd's default KillMode sends SIGTERM to
    # every process of the unit: the supervisor decides (warm shutdown lets the task finish)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _on_sigusr1)
    _die_with_parent()
    logging.basicConfig(level=level, format="[%(asctime)s] %(levelname)s %(name)s[child %(process)d]: %(message)s")
    try:
        from machinery.cli_common import load_app

        server = load_app(app)
    except BaseException as exc:  # noqa: BLE001 - reported to the supervisor, which stops
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return
    import pickle

    ctx_server: Any = None
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        name, values, body, soft = msg
        _soft_limit = soft
        try:
            task = server.get_registered_task(name)
            if body is not None:
                from machinery.server import Server
                from machinery.signature import decode_signature
                from machinery.task import TaskContext

                if ctx_server is None:
                    ctx_server = Server(config)
                values.insert(0, TaskContext(decode_signature(body), ctx_server, consumer_tag))
            _running = True
            try:
                value = task.fn(*values)
            finally:
                _running = False
                if body is not None:
                    values[0].finish()  # no progress report after the task returned
            reply: tuple[str, Any, int] = ("ok", value, 0)
        except BaseException as exc:  # noqa: BLE001 - every task error goes back to the supervisor
            _running = False
            tb = traceback.format_exc()
            err: BaseException = exc
            if not isinstance(exc, Exception):  # SystemExit and the like: a task error like any other
                err = ChildTaskError(type(exc).__name__, str(exc) or type(exc).__name__)
            else:
                try:
                    pickle.loads(pickle.dumps(exc))
                except Exception:  # noqa: BLE001 - an exception that does not make the round trip
                    err = ChildTaskError(type(exc).__name__, str(exc))
            reply = ("err", (err, tb), 0)
        if measure:  # resident memory, for max_memory_per_child (read only when it is set)
            reply = (reply[0], reply[1], _rss_kib())
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - an exception or result that does not pickle
            if reply[0] == "ok":
                err = TypeError(f"the task's result cannot be sent from the child process: {exc}")
                tb = ""
            else:
                orig, tb = reply[1]
                err = ChildTaskError(type(orig).__name__, str(orig))
            conn.send(("err", (err, tb), reply[2]))
