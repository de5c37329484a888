"""Registered tasks: argument validation from type hints, context injection, async support."""

from __future__ import annotations

import inspect
import threading
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from machinery.errors import ArgumentTypeError

if TYPE_CHECKING:
    from machinery.progress import Progress
    from machinery.ratelimit import RateLimit
    from machinery.server import Server
    from machinery.signature import Signature

__all__ = ["Task", "TaskContext"]


@dataclass(slots=True)
class TaskContext:
    """Passed as the first argument to tasks whose first parameter is annotated ``TaskContext``
    (Go's ``context.Context`` first argument).

    :param signature: the task being run.
    :param server: the server, to send further tasks.
    :param consumer_tag: the worker's consumer tag.
    """

    signature: Signature
    server: Server | None = None
    consumer_tag: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    _finished: bool = field(default=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def finish(self) -> None:
        """Called by the worker once the task function has returned or raised, before its final
        state is stored: from then on :meth:`report_progress` refuses, so that a thread the task
        left behind cannot write STARTED over the final state."""
        with self._lock:
            self._finished = True

    @property
    def task_uuid(self) -> str:
        """The task's UUID."""
        return self.signature.uuid

    @property
    def retry_count(self) -> int:
        """Retries left (Go's ``RetryCount``)."""
        return self.signature.retry_count

    @property
    def headers(self) -> Mapping[str, Any]:
        """The message headers (tracing context and the like)."""
        return self.signature.headers

    def report_progress(self, done: float, total: float | None = None, info: Any = None) -> Progress:
        """Store how far the task has come, for :attr:`AsyncResult.progress
        <machinery.results.AsyncResult.progress>`, ``machinery status`` and ``machinery watch``.

        One backend write per call (the task's STARTED state with an extra ``Progress`` key Go
        ignores; see :mod:`machinery.progress`), so report every few percent or every second
        rather than every item. Call it only while the task runs: the final state replaces it.
        From an ``async def`` task, ``await ctx.areport_progress(...)`` keeps the loop free.

        :param done: units done (>= 0).
        :param total: units in all (> 0), or None when unknown.
        :param info: any JSON value (a message, the current item...).
        :raises TypeError: a non-number, or an ``info`` that is not JSON.
        :raises ValueError: a negative or non-finite number.
        :raises RuntimeError: the context has no server (built by hand, outside a worker), or the
            task has finished (a thread it started reports late).
        """
        from machinery.progress import report_progress

        if self.server is None:
            raise RuntimeError("report_progress needs the context's server (run the task in a worker)")
        with self._lock:  # never interleaved with finish(): no STARTED write after the final state
            if self._finished:
                raise RuntimeError(f"task {self.signature.uuid} has finished: its progress can no longer change")
            return report_progress(self.server.backend, self.signature, done, total, info)

    async def areport_progress(self, done: float, total: float | None = None, info: Any = None) -> Progress:
        """:meth:`report_progress` for ``async def`` tasks: the write runs in a thread."""
        import asyncio

        return await asyncio.to_thread(self.report_progress, done, total, info)


Converter = Callable[[Any], Any]


def _check(kind: str, ok: Callable[[Any], bool], conv: Callable[[Any], Any] | None = None) -> Converter:
    def run(v: Any) -> Any:
        if not ok(v):
            raise ArgumentTypeError(kind, v, f"does not match the task's annotation {kind}")
        return conv(v) if conv else v

    return run


def _converter(ann: Any) -> Converter | None:
    """A checker/converter for one annotation, or None when anything goes."""
    if ann is Any or ann is inspect.Parameter.empty or ann is object:
        return None
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        convs = [(_converter(a), a) for a in typing.get_args(ann)]
        if any(c is None and a is not type(None) for c, a in convs):
            return None

        def union(v: Any) -> Any:
            for c, a in convs:
                if a is type(None):
                    if v is None:
                        return None
                    continue
                try:
                    return c(v) if c else v
                except ArgumentTypeError:
                    continue
            raise ArgumentTypeError(str(ann), v, "does not match any type of the task's annotation")

        return union
    if ann is bool:
        return _check("bool", lambda v: type(v) is bool)
    if ann is int:
        return _check("int", lambda v: isinstance(v, int) and not isinstance(v, bool))
    if ann is float:
        return _check("float", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), float)
    if ann is str:
        return _check("str", lambda v: isinstance(v, str))
    if ann is bytes:
        return _check("bytes", lambda v: isinstance(v, (bytes, bytearray)), bytes)
    if origin in (list, typing.List, tuple) or ann in (list, tuple):  # noqa: UP006
        args = typing.get_args(ann)
        elem = _converter(args[0]) if args and origin is list else None
        name = getattr(ann, "__name__", str(ann))

        def seq(v: Any) -> Any:
            if not isinstance(v, (list, tuple)):
                raise ArgumentTypeError(str(ann), v, f"expected a {name}")
            out = [elem(x) for x in v] if elem else list(v)
            return tuple(out) if (origin is tuple or ann is tuple) else out

        return seq
    if origin in (dict, Mapping) or ann in (dict,):
        return _check(str(ann), lambda v: isinstance(v, dict))
    return None


class Task:
    """A registered task function.

    Type hints on the function's parameters are used to validate (and where lossless, convert)
    the arguments before the call: an ``int`` parameter refuses a string, a ``float`` parameter
    accepts an ``int64`` argument as a float. A first parameter annotated :class:`TaskContext`
    receives the task's context. ``async def`` functions are supported.

    :param name: the registered name.
    :param fn: the function.
    :param rate_limit: ``"100/s"``, ``"10/m"``, ``"1000/h"`` or a :class:`~machinery.ratelimit.RateLimit`.
    :raises ValueError: a malformed rate limit.
    :param time_limit: hard time limit in seconds (None: the worker's default); see
        :mod:`machinery.timelimit`.
    :param soft_time_limit: soft time limit in seconds (None: the worker's default).
    """

    __slots__ = (
        "convs",
        "fn",
        "is_async",
        "max_args",
        "min_args",
        "name",
        "rate_limit",
        "rest_conv",
        "soft_time_limit",
        "takes_context",
        "time_limit",
    )

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        rate_limit: str | RateLimit | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
    ) -> None:
        for what, limit in (("time_limit", time_limit), ("soft_time_limit", soft_time_limit)):
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
                raise ValueError(f"task {name!r}: {what} must be a positive number of seconds, got {limit!r}")
        self.time_limit = float(time_limit) if time_limit is not None else None
        self.soft_time_limit = float(soft_time_limit) if soft_time_limit is not None else None
        if not callable(fn):
            raise TypeError(f"task {name!r}: {fn!r} is not callable")
        if not isinstance(name, str) or not name:
            raise ValueError("a task needs a non-empty name")
        self.name = name
        self.fn = fn
        #: Starts per period across every worker of the backend (:mod:`machinery.ratelimit`), or None.
        self.rate_limit: RateLimit | None = None
        if rate_limit is not None:
            from machinery.ratelimit import RateLimit

            self.rate_limit = RateLimit.parse(rate_limit)
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - unresolvable forward references: skip checking
            hints = {}
        self.takes_context = False
        self.convs: list[Converter | None] = []
        self.rest_conv: Converter | None = None
        self.min_args = 0
        self.max_args: int | None = None
        if sig is None:
            return
        params = list(sig.parameters.values())
        if params and (
            hints.get(params[0].name) is TaskContext or params[0].annotation in (TaskContext, "TaskContext")
        ):
            self.takes_context = True
            params = params[1:]
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        var = [p for p in params if p.kind == p.VAR_POSITIONAL]
        required_kw = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
        if required_kw:
            raise TypeError(f"task {name!r}: keyword-only parameters without defaults cannot be filled from a message")
        self.convs = [_converter(hints.get(p.name, p.annotation)) for p in positional]
        self.min_args = sum(1 for p in positional if p.default is p.empty)
        if var:
            self.rest_conv = _converter(hints.get(var[0].name, var[0].annotation))
        else:
            self.max_args = len(positional)

    def bind(self, values: list[Any]) -> list[Any]:
        """Check and convert argument values against the function's signature and hints.

        :raises ArgumentTypeError: wrong number of arguments or a value that does not fit.
        """
        n = len(values)
        if n < self.min_args or (self.max_args is not None and n > self.max_args):
            want = (
                str(self.min_args)
                if self.max_args == self.min_args
                else (f"{self.min_args}..{self.max_args}" if self.max_args is not None else f"at least {self.min_args}")
            )
            raise ArgumentTypeError("args", values, f"task {self.name!r} takes {want} arguments, got {n}")
        convs = self.convs
        rest = self.rest_conv
        if not convs and rest is None:
            return values
        out = values[:]
        nc = len(convs)
        try:
            for i, v in enumerate(values):
                c = convs[i] if i < nc else rest
                if c is not None:
                    out[i] = c(v)
        except ArgumentTypeError as exc:
            raise ArgumentTypeError(
                exc.arg_type, exc.value, f"argument {i + 1} of task {self.name!r} {exc.reason}"
            ) from None
        return out

    def __repr__(self) -> str:
        return f"<Task {self.name} {getattr(self.fn, '__qualname__', self.fn)!s}>"
