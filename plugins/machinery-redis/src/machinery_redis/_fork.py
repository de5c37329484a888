"""What a forked child must not inherit: its parent's locks, queues and background threads.

``os.fork()`` copies one thread, the caller, and every lock in whatever state the other threads
left it. A child forked while the parent's batcher was sending, or while its broker held a lock,
would wait for ever for a thread that does not exist in the child. Objects registered here start
afresh in the child (new locks, nothing queued, no connection of the parent's); what the parent
had queued or held is the parent's to finish.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["track"]


class _Forkable(Protocol):
    def _after_fork_in_child(self) -> None: ...


_objects: weakref.WeakSet[_Forkable] = weakref.WeakSet()


def track(obj: _Forkable) -> None:
    """Call ``obj._after_fork_in_child()`` in every child forked from now on (while ``obj`` lives)."""
    _objects.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_objects):
        obj._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
