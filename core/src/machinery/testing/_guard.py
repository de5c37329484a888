"""The suite guards itself: a subclass may not delete or silently override a conformance test.

A plugin's test class inherits every contract test. Unsupported features are declared through
the transport's capability attributes (which turn into skips with a reason), never by removing
tests. The only accepted override of a suite test is one marked
``@pytest.mark.xfail(reason="...")``, which keeps the test running and the reason visible.
Idea from langchain-tests' ``test_no_overrides_DO_NOT_OVERRIDE``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["GUARD_TEST", "SuiteBase", "override_violations", "suite_tests"]

#: The guard test itself; overriding it is refused when the class is defined.
GUARD_TEST = "test_no_overrides"


def suite_tests(cls: type) -> dict[str, Callable[..., Any]]:
    """The contract tests ``cls`` inherits from suite classes, by name (nearest suite class wins)."""
    tests: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        if klass.__dict__.get("_machinery_suite", False):
            for name, value in klass.__dict__.items():
                if name.startswith("test_") and callable(value):
                    tests[name] = value
    return tests


def _xfail_reason(obj: object) -> str:
    for mark in getattr(obj, "pytestmark", None) or ():
        if getattr(mark, "name", None) == "xfail":
            reason = mark.kwargs.get("reason", "")
            if isinstance(reason, str) and reason.strip():
                return reason
    return ""


def override_violations(cls: type) -> list[str]:
    """Every suite test ``cls`` deletes or overrides without an xfail reason (empty when clean)."""
    out: list[str] = []
    for name, original in suite_tests(cls).items():
        current = getattr(cls, name, None)
        if current is original:
            continue
        owner = next((k.__name__ for k in cls.__mro__ if name in k.__dict__), cls.__name__)
        if not callable(current):
            out.append(f"{owner}.{name} deletes the conformance test (set to {current!r})")
        elif not _xfail_reason(current):
            out.append(f'{owner}.{name} overrides the conformance test without @pytest.mark.xfail(reason="...")')
    return out


class SuiteBase:
    """Base of every conformance class: holds the no-override guard.

    Subclasses that are part of the suite set ``_machinery_suite = True`` in their own body.
    """

    _machinery_suite = True

    #: Set True for transports that live inside the test process (``memory://``): tests that
    #: need a second process skip with that reason, and workflow workers run as threads.
    process_local: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if GUARD_TEST in cls.__dict__:
            raise TypeError(f"{cls.__name__} must not override {GUARD_TEST}: it guards the conformance suite")

    def test_no_overrides(self) -> None:
        """No suite test is deleted, or overridden without ``@pytest.mark.xfail(reason=...)``."""
        problems = override_violations(type(self))
        assert not problems, "conformance tests must not be removed or replaced:\n  " + "\n  ".join(problems)
