"""The embedded default transport (``sqlite://``), registered like any plugin.

Classes are named as ``"module:Class"`` strings so nothing is imported until a ``sqlite://``
URL is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery._hookimpl import hookimpl

if TYPE_CHECKING:
    from machinery.plugins import Register

#: Environment variables of the ``sqlite:`` section (declared with the registration, so reading
#: a configuration imports nothing of the transport).
ENV_OPTIONS: dict[str, str] = {
    "SQLITE_VISIBILITY_TIMEOUT": "visibility_timeout",
    "SQLITE_BUSY_TIMEOUT": "busy_timeout",
    "SQLITE_POLL_INTERVAL": "poll_interval",
    "SQLITE_SYNCHRONOUS": "synchronous",
}


@hookimpl
def machinery_register_brokers(register: Register) -> None:
    """``sqlite://`` broker."""
    register("sqlite", "machinery.builtin.sqlite.broker:SQLiteBroker", section="sqlite", env=ENV_OPTIONS)


@hookimpl
def machinery_register_backends(register: Register) -> None:
    """``sqlite://`` backend."""
    register("sqlite", "machinery.builtin.sqlite.backend:SQLiteBackend", section="sqlite")


@hookimpl
def machinery_register_locks(register: Register) -> None:
    """``sqlite://`` lock."""
    register("sqlite", "machinery.builtin.sqlite.lock:SQLiteLock", section="sqlite")
