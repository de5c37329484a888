"""The embedded default transport (``sqlite://``), registered like any plugin.

:class:`~machinery.builtin.sqlite.transport.SQLiteTransport` (the URL, the ``sqlite:`` options
and the database handle) hands out the broker, the result backend and the lock; it is named as
a ``"module:Class"`` string with its section and environment variables as plain data, so
nothing is imported until a ``sqlite://`` URL is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery._hookimpl import hookimpl

if TYPE_CHECKING:
    from machinery.transport import TransportRegistry

#: Environment variables of the ``sqlite:`` section (declared with the registration, so reading
#: a configuration imports nothing of the transport).
ENV_OPTIONS: dict[str, str] = {
    "SQLITE_VISIBILITY_TIMEOUT": "visibility_timeout",
    "SQLITE_BUSY_TIMEOUT": "busy_timeout",
    "SQLITE_POLL_INTERVAL": "poll_interval",
    "SQLITE_SYNCHRONOUS": "synchronous",
}


@hookimpl
def machinery_register_transports(registry: TransportRegistry) -> None:
    """``sqlite://``: broker, result backend and lock on one database file."""
    registry.add(
        "sqlite",
        "machinery.builtin.sqlite.transport:SQLiteTransport",
        roles={"broker", "backend", "lock"},
        section="sqlite",
        env=ENV_OPTIONS,
    )
