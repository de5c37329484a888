"""The task hooks skip pluggy's dispatch (``machinery._broadcast``) and must behave as pluggy
does: same order, same exception, plugins registered or unregistered later, wrappers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from machinery import Signature, hookimpl
from machinery.events import TaskEvent
from machinery.plugins import PluginHost


class Plugin:
    def __init__(self, name: str, calls: list[str], *, fail: bool = False) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    @hookimpl
    def machinery_task_started(self, event: TaskEvent) -> None:
        self.calls.append(f"{self.name}:{event.signature.name}")
        if self.fail:
            raise RuntimeError(self.name)


class First(Plugin):
    @hookimpl(tryfirst=True)
    def machinery_task_started(self, event: TaskEvent) -> None:
        self.calls.append(f"{self.name}:{event.signature.name}")


class NoArgs:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl
    def machinery_task_started(self) -> None:
        self.calls.append("no-args")


class Wrapper:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl(wrapper=True)
    def machinery_task_started(self, event: TaskEvent) -> Iterator[None]:
        self.calls.append("wrapper:before")
        yield
        self.calls.append("wrapper:after")


@pytest.fixture
def host() -> PluginHost:
    return PluginHost(load_entry_points=False)


def event(name: str = "t") -> TaskEvent:
    return TaskEvent(Signature(name), "tag")


def both(host: PluginHost, calls: list[str]) -> tuple[list[str], list[str]]:
    """The calls of one event through the host and of one through pluggy itself."""
    calls.clear()
    host.task_started(event("host"))
    ours = list(calls)
    calls.clear()
    host.pm.hook.machinery_task_started(event=event("host"))
    return ours, list(calls)


def test_the_order_is_pluggys(host: PluginHost) -> None:
    calls: list[str] = []
    for p in (Plugin("a", calls), First("first", calls), Plugin("b", calls), Plugin("c", calls)):
        host.pm.register(p, name=p.name)
    ours, pluggys = both(host, calls)
    assert ours == pluggys == ["first:host", "c:host", "b:host", "a:host"]
    assert host._task_started._plan[1] is not None  # called directly, not through pluggy


def test_the_first_exception_propagates_and_skips_the_rest(host: PluginHost) -> None:
    calls: list[str] = []
    host.pm.register(Plugin("a", calls), name="a")
    host.pm.register(Plugin("b", calls, fail=True), name="b")
    with pytest.raises(RuntimeError, match=r"^b$"):
        host.task_started(event())
    assert calls == ["b:t"]  # as pluggy: "a" is not called after "b" raised


def test_plugins_registered_and_unregistered_later_are_seen(host: PluginHost) -> None:
    calls: list[str] = []
    a = Plugin("a", calls)
    host.pm.register(a, name="a")
    host.task_started(event())
    host.pm.register(Plugin("b", calls), name="b")
    host.task_started(event())
    host.pm.unregister(a)
    host.task_started(event())
    assert calls == ["a:t", "b:t", "a:t", "b:t"]


def test_a_wrapper_or_other_arguments_go_through_pluggy(host: PluginHost) -> None:
    calls: list[str] = []
    host.pm.register(Plugin("a", calls), name="a")
    host.pm.register(NoArgs(calls), name="no-args")
    ours, pluggys = both(host, calls)
    assert ours == pluggys == ["no-args", "a:host"]
    host.pm.unregister(name="no-args")
    host.pm.register(Wrapper(calls), name="wrapper")
    ours, pluggys = both(host, calls)
    assert ours == pluggys == ["wrapper:before", "a:host", "wrapper:after"]
    assert host._task_started._plan[1] is None  # through pluggy


def test_no_implementation_is_nothing(host: PluginHost) -> None:
    host.task_started(event())
    host.task_retried(event())
    calls: list[Any] = []
    host.pm.register(Plugin("a", calls), name="a")
    host.task_retried(event())  # another hook: untouched
    assert calls == []
