"""Pushed state changes for waiting producers: Redis server-assisted client tracking.

``AsyncResult.get()`` on Redis does not poll. A :class:`StateWatcher` keeps two connections of
its own: on *reader*, ``GET``\\ s run with ``CLIENT TRACKING ON REDIRECT <id>``, so Redis
remembers which state keys this process has read; *listener* (client ``<id>``) is subscribed to
``__redis__:invalidate``, where Redis announces the keys that have changed since. A waiter reads
the state, and if it is not final yet, sleeps until its key is announced, then reads again: the
result arrives one round trip after the worker stored it, whoever the worker is (a Go worker
too: nothing is asked of the writer). The tracking table lives on the server and holds the keys
read since their last change, so it costs nothing for keys nobody waits on.

If the listener's connection drops, announcements may be lost: waiters then also re-read every
``fallback`` seconds, and the watcher is rebuilt on the next wait. Not used on Redis Cluster
(tracking there is per node) nor behind Sentinel: those poll.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from machinery_redis.batch import round_trip

log = logging.getLogger("machinery.redis")

__all__ = ["StateWatcher"]

CHANNEL = b"__redis__:invalidate"


class StateWatcher:
    """Reads keys with tracking on, and wakes the threads waiting for a key when it changes.

    :param make_connection: a factory of new, unconnected redis-py connections (RESP2).
    """

    def __init__(self, make_connection: Callable[[], Any]) -> None:
        self._make = make_connection
        self._lock = threading.Lock()  # guards the reader connection
        self._waiters: dict[bytes, set[threading.Event]] = {}
        self._waiters_lock = threading.Lock()
        self._reader: Any = None
        self._listener: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.broken = False
        #: The process that opened the connections (a forked child must build its own).
        self.pid = os.getpid()

    def start(self) -> None:
        """Open both connections, subscribe and turn tracking on (raises if Redis refuses)."""
        listener = self._make()
        listener.connect()
        listener.send_command("CLIENT", "ID")
        client_id = int(listener.read_response())
        listener.send_command("SUBSCRIBE", CHANNEL)
        listener.read_response()
        reader = self._make()
        reader.connect()
        reader.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id)
        reply = reader.read_response()
        if reply not in (b"OK", "OK", True):
            raise RuntimeError(f"CLIENT TRACKING refused: {reply!r}")
        self._listener, self._reader = listener, reader
        self._thread = threading.Thread(target=self._listen, name="machinery-redis-watcher", daemon=True)
        self._thread.start()

    def get(self, key: str) -> bytes | None:
        """``GET key`` on the tracking connection: a later change of ``key`` will be announced."""
        with self._lock:
            if self.broken:
                raise ConnectionError("the state watcher lost its connection")
            try:
                value = round_trip(self._reader, [("GET", key)])[0]
            except BaseException:
                self.broken = True
                raise
            if isinstance(value, Exception):
                raise value
            return value  # type: ignore[no-any-return]

    def subscribe(self, key: str) -> threading.Event:
        """An event set whenever ``key`` is announced as changed (until :meth:`unsubscribe`)."""
        event = threading.Event()
        k = key.encode()
        with self._waiters_lock:
            self._waiters.setdefault(k, set()).add(event)
        return event

    def unsubscribe(self, key: str, event: threading.Event) -> None:
        """Stop waking ``event`` for ``key``."""
        k = key.encode()
        with self._waiters_lock:
            events = self._waiters.get(k)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[k]

    def _wake(self, keys: Any) -> None:
        with self._waiters_lock:
            if keys is None:  # FLUSHALL / FLUSHDB: everything changed
                events = [e for es in self._waiters.values() for e in es]
            else:
                events = [e for k in keys for e in self._waiters.get(k, ())]
        for e in events:
            e.set()

    def _listen(self) -> None:
        conn = self._listener
        try:
            while not self._closed:
                if not conn.can_read(timeout=1.0):
                    continue
                msg = conn.read_response()
                if isinstance(msg, list) and len(msg) == 3 and msg[0] == b"message" and msg[1] == CHANNEL:
                    self._wake(msg[2])
        except Exception as exc:  # noqa: BLE001 - waiters fall back to re-reading
            if not self._closed:
                log.info("redis state watcher stopped (%s); waiting results are polled", type(exc).__name__)
        finally:
            self.broken = True
            self._wake(None)
            conn.disconnect()

    def close(self) -> None:
        """Close both connections and stop the listening thread."""
        self._closed = True
        self.broken = True
        with self._lock:
            if self._reader is not None:
                self._reader.disconnect()
        if self._listener is not None:
            self._listener.disconnect()  # wakes the listening thread, which then exits
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)


def wait_completed(
    watcher: StateWatcher,
    key: str,
    load: Callable[[bytes | None], Any],
    timeout: float,
    fallback: float,
) -> Any:
    """Read ``key`` until ``load(raw)`` is a completed state or ``timeout`` runs out.

    Between reads, sleeps until the key is announced as changed (or ``fallback`` seconds pass).
    Returns the last state read (None when there was none).
    """
    deadline = time.monotonic() + timeout
    event = watcher.subscribe(key)
    try:
        while True:
            event.clear()  # before the read: a change after it will set it again
            state = load(watcher.get(key))
            if state is not None and state.is_completed:
                return state
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return state
            event.wait(min(remaining, fallback))
    finally:
        watcher.unsubscribe(key, event)
