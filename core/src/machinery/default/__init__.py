"""The embedded default transport (``sqlite://``), registered like any plugin.

Classes are named as ``"module:Class"`` strings so nothing is imported until a ``sqlite://``
URL is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery._hookimpl import hookimpl

if TYPE_CHECKING:
    from machinery.plugins import Register


@hookimpl
def machinery_register_brokers(register: Register) -> None:
    """``sqlite://`` broker."""
    register("sqlite", "machinery.default.broker:SQLiteBroker")


@hookimpl
def machinery_register_backends(register: Register) -> None:
    """``sqlite://`` backend."""
    register("sqlite", "machinery.default.backend:SQLiteBackend")


@hookimpl
def machinery_register_locks(register: Register) -> None:
    """``sqlite://`` lock."""
    register("sqlite", "machinery.default.lock:SQLiteLock")
