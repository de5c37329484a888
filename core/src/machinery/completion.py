"""A small future for stores that answer later: what :meth:`BackendOps._store_states
<machinery.backend_ops.BackendOps._store_states>` returns.

A store that batches writes may answer after the call returns; the worker acknowledges a message
only once the store has answered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Completion"]

Callback = Callable[["BaseException | None"], object]


class Completion:
    """The outcome of a store that may come later (a small future).

    A backend that writes at once returns :meth:`stored` (or :meth:`failed`); one that batches
    writes returns a pending completion and calls :meth:`resolve` once the store has answered,
    from whatever thread learns it.
    """

    __slots__ = ("_callbacks", "_done", "_error")

    # No lock: the hand-over between the storing and the waiting thread uses only single list
    # operations (append, pop, remove), each atomic, so every callback runs exactly once.

    def __init__(self) -> None:
        self._done = False
        self._error: BaseException | None = None
        self._callbacks: list[Callback] = []

    @staticmethod
    def stored() -> Completion:
        """A completion that is done: the write is stored (a shared instance)."""
        return _STORED

    @staticmethod
    def failed(error: BaseException) -> Completion:
        """A completion that is done: the write failed with ``error``."""
        c = Completion()
        c._done, c._error = True, error
        return c

    def resolve(self, error: BaseException | None = None) -> None:
        """Report the outcome (None: stored) and run the callbacks, on this thread. Once only."""
        if self._done:
            raise RuntimeError("this completion is already resolved")
        self._error = error
        self._done = True
        callbacks = self._callbacks
        while callbacks:
            try:
                fn = callbacks.pop(0)
            except IndexError:  # taken by add_done_callback meanwhile
                break
            _call(fn, error)

    def done(self) -> bool:
        """True once the store has answered (stored or failed)."""
        return self._done

    def add_done_callback(self, fn: Callback) -> None:
        """Call ``fn(error)`` once done (``error`` None when stored): at once, on this thread, if
        it is done; else on the thread that resolves it. An exception ``fn`` raises is logged."""
        if not self._done:
            callbacks = self._callbacks
            callbacks.append(fn)
            if not self._done:
                return  # resolve() has not begun: it pops fn and runs it
            try:  # resolved meanwhile: whoever removes fn from the list runs it
                callbacks.remove(fn)
            except ValueError:
                return
        _call(fn, self._error)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait until done (at most ``timeout`` seconds) and return the error, None when stored.

        :raises TimeoutError: not done in time.
        """
        if not self._done:
            event = threading.Event()
            self.add_done_callback(lambda _e: event.set())
            if not event.wait(timeout):
                raise TimeoutError("the store has not answered yet")
        return self._error

    def result(self, timeout: float | None = None) -> None:
        """Wait until done (at most ``timeout`` seconds); raise the store's error if it failed.

        :raises TimeoutError: not done in time.
        """
        error = self.exception(timeout)
        if error is not None:
            raise error

    def __repr__(self) -> str:
        what = "pending" if not self._done else ("stored" if self._error is None else f"failed: {self._error!r}")
        return f"<Completion {what}>"


def _log() -> Any:
    import logging  # here, not at import: a producer never loads logging (test_import)

    return logging.getLogger("machinery.backend")


def _call(fn: Callback, error: BaseException | None) -> None:
    try:
        fn(error)
    except Exception:  # noqa: BLE001 - logged with its traceback
        _log().exception("a store completion callback raised")


_STORED = Completion()
_STORED._done = True
