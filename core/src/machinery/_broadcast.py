"""Task hooks called without pluggy's dispatch (:class:`Broadcast`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Broadcast"]


class Broadcast:
    """One task hook, called the way pluggy calls it (the last registered implementation first;
    the first exception propagates, the rest are skipped) without pluggy's dispatch, which costs
    a no-op task's worker more than a metrics plugin's own work. The implementations are read
    again on each call (a list copy), so a plugin registered or unregistered later is seen. A
    hook with a wrapper, or an implementation taking other arguments than ``event``, goes
    through pluggy (so does pluggy's call tracing, which sees the task hooks only then)."""

    __slots__ = ("_caller", "_plan")

    def __init__(self, caller: Any) -> None:
        self._caller = caller
        self._plan: tuple[list[Any], tuple[Callable[[Any], object], ...] | None] = ([None], None)

    def __call__(self, event: Any) -> None:
        impls = self._caller.get_hookimpls()
        seen, fns = self._plan
        if impls != seen:
            fns = self._direct(impls)
            self._plan = (impls, fns)  # one assignment: another thread sees the old plan or this one
        if fns is None:
            self._caller(event=event)
            return
        for fn in fns:
            fn(event)

    @staticmethod
    def _direct(impls: list[Any]) -> tuple[Callable[[Any], object], ...] | None:
        fns = []
        for impl in reversed(impls):  # pluggy's order of calls
            if impl.hookwrapper or impl.wrapper or impl.argnames != ("event",) or impl.kwargnames:
                return None
            fns.append(impl.function)
        return tuple(fns)
