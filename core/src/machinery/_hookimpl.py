"""The ``hookimpl`` marker, typed so decorated functions keep their signatures."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import pluggy

__all__ = ["hookimpl"]

F = TypeVar("F", bound=Callable[..., object])

#: Mark a function as a machinery hook implementation (``@hookimpl``).
hookimpl = cast(Callable[[F], F], pluggy.HookimplMarker("machinery"))
