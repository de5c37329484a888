"""The task :class:`Registry`: registered tasks and periodic entries, and the ``@task`` decorator.

Pure data, with no I/O and no transport: a :class:`~machinery.Server` composes one (its
``registry``), workers look tasks up in it, and schedulers read its periodic entries. Several
servers may share one (``Server(config, registry=app.registry)``), which is how the command
line re-binds an app's tasks to other transports.

(:mod:`machinery.registry` is the *worker* registry: live workers' heartbeats.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from machinery.errors import TaskNotRegisteredError
from machinery.task import Task

if TYPE_CHECKING:
    from machinery.ratelimit import RateLimit
    from machinery.schedule import PeriodicEntry

__all__ = ["Registry"]

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Tasks by name and periodic entries by name."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        #: The registered tasks by name (live: later registrations show; read it, register with
        #: :meth:`register_task`).
        self.tasks: Mapping[str, Task] = self._tasks
        self._periodic: list[PeriodicEntry] = []

    # -- tasks ----------------------------------------------------------------------------------

    def register_task(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        rate_limit: str | RateLimit | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
    ) -> Task:
        """Register ``fn`` under ``name`` (replacing an earlier registration of that name).

        :param rate_limit: at most this many starts per period across every worker sharing the
            backend: ``"100/s"``, ``"10/m"``, ``"1000/h"`` (see :mod:`machinery.ratelimit`).
        :param time_limit: hard time limit in seconds (docs/pools.md); None: the worker's default.
        :param soft_time_limit: soft time limit in seconds, raising
            :class:`~machinery.errors.SoftTimeLimitExceeded` inside the task.
        :raises TypeError: ``fn`` cannot be called with arguments from a message.
        :raises ValueError: a malformed ``rate_limit``.
        """
        task = Task(name, fn, rate_limit=rate_limit, time_limit=time_limit, soft_time_limit=soft_time_limit)
        self._tasks[name] = task
        return task

    def register_tasks(self, tasks: Mapping[str, Callable[..., Any]]) -> None:
        """Register several tasks at once; nothing is registered if one is invalid."""
        built = {name: Task(name, fn) for name, fn in tasks.items()}
        self._tasks.update(built)

    @overload
    def task(self, name: F) -> F: ...

    @overload
    def task(
        self,
        name: str | None = None,
        *,
        rate_limit: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        name: str | F | None = None,
        *,
        rate_limit: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
    ) -> F | Callable[[F], F]:
        """Decorator registering a function as a task, under ``name`` or its ``__name__``.

        ``@registry.task`` and ``@registry.task("add")`` both work; the function is returned as
        is. ``rate_limit="10/s"`` limits its starts across every worker (:meth:`register_task`);
        ``@registry.task("crunch", time_limit=30, soft_time_limit=25)`` sets its time limits.
        """
        if callable(name):
            fn = name
            self.register_task(fn.__name__, fn)
            return fn

        def deco(fn: F) -> F:
            self.register_task(
                name or fn.__name__,
                fn,
                rate_limit=rate_limit,
                time_limit=time_limit,
                soft_time_limit=soft_time_limit,
            )
            return fn

        return deco

    def get(self, name: str) -> Task:
        """The registered task. :raises TaskNotRegisteredError: when unknown."""
        task = self._tasks.get(name)
        if task is None:
            raise TaskNotRegisteredError(name)
        return task

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> list[str]:
        """The registered task names, sorted."""
        return sorted(self._tasks)

    # -- periodic entries -------------------------------------------------------------------------

    def add_periodic(self, entry: PeriodicEntry) -> None:
        """Add a periodic entry. :raises ValueError: its name is already registered (names key
        the tick lock)."""
        if any(e.name == entry.name for e in self._periodic):
            raise ValueError(f"a periodic entry named {entry.name!r} is already registered (names key the tick lock)")
        self._periodic.append(entry)

    @property
    def periodic_entries(self) -> list[PeriodicEntry]:
        """The registered periodic entries (a copy)."""
        return list(self._periodic)

    def __repr__(self) -> str:
        return f"<Registry tasks={len(self._tasks)} periodic={len(self._periodic)}>"
