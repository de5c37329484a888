"""The embedded transport: one :class:`SQLiteTransport` per ``sqlite://`` URL and configuration,
owning what its broker, backend and lock share: the URL and the ``sqlite:`` options (parsed
once, here), the database handle (a :class:`~machinery.builtin.sqlite._db.Database`: the
connection pool, the in-process write lock and notifier, opened on first use and closed with
the last role, by the core's count) and the translation of :mod:`sqlite3` errors into the
broker, backend and lock errors naming the file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from machinery.builtin.sqlite._errors import SQLiteBackendError, SQLiteBrokerError, SQLiteLockError, describe_error
from machinery.config import parse_options
from machinery.errors import ConfigError
from machinery.transport import Transport

if TYPE_CHECKING:
    from machinery.builtin.sqlite._db import Database
    from machinery.config import Config

__all__ = ["SQLiteOptions", "SQLiteRole", "SQLiteTransport", "parse_url"]

_SYNCHRONOUS = ("off", "normal", "full", "extra")


@dataclass(frozen=True)
class SQLiteOptions:
    """Options of the ``sqlite:`` config section (or the URL's query string).

    :param visibility_timeout: seconds a claimed message stays leased; a live worker renews
        the lease every third of it, so only a dead worker's messages come back, after at most
        this long.
    :param busy_timeout: seconds to wait for another process's write lock before failing.
    :param poll_interval: longest wait, in seconds, between two cheap checks (``PRAGMA
        data_version``) for messages published by *other* processes while idle (the first
        check comes 0.5 ms after the queue went idle, each next one 1.25 times later);
        same-process publishes wake at once.
    :param synchronous: SQLite's ``synchronous`` pragma: ``normal`` (durable across process
        crashes, the default), ``full`` (also across power loss), ``extra`` or ``off``.
    :param heartbeat_interval: seconds between lease renewals (default: a third of the lease).
    """

    visibility_timeout: float = 30.0
    busy_timeout: float = 5.0
    poll_interval: float = 0.01
    synchronous: str = "normal"
    heartbeat_interval: float = 0.0

    def __post_init__(self) -> None:
        if self.visibility_timeout <= 0:
            raise ConfigError("sqlite.visibility_timeout", "must be > 0 seconds")
        if self.busy_timeout < 0:
            raise ConfigError("sqlite.busy_timeout", "must be >= 0 seconds")
        if not 0 < self.poll_interval <= 1:
            raise ConfigError("sqlite.poll_interval", "must be > 0 and <= 1 second")
        if self.synchronous.lower() not in _SYNCHRONOUS:
            raise ConfigError("sqlite.synchronous", f"must be one of {', '.join(_SYNCHRONOUS)}")
        if self.heartbeat_interval < 0 or self.heartbeat_interval >= self.visibility_timeout:
            raise ConfigError("sqlite.heartbeat_interval", "must be >= 0 and shorter than visibility_timeout")

    @property
    def heartbeat(self) -> float:
        """Seconds between lease renewals."""
        return self.heartbeat_interval or self.visibility_timeout / 3


def _split(url: str) -> tuple[str, str]:
    """The absolute database path and the query string of a ``sqlite://`` URL.

    :raises ConfigError: a malformed URL or an in-memory path.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigError("broker", f"not a sqlite:// URL: {url!r}")
    if parts.netloc:
        raise ConfigError(
            "sqlite",
            f"{url!r} has a host part ({parts.netloc!r}); use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db",
        )
    raw = unquote(parts.path)
    path = raw[1:] if raw.startswith("/") else raw
    if not path:
        raise ConfigError("sqlite", f"{url!r} names no database file; e.g. sqlite:///machinery.db")
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigError(
            "sqlite", f"{url!r}: in-memory and URI databases are not supported; use memory:// for in-process queues"
        )
    return os.path.abspath(os.path.expanduser(path)), parts.query


def parse_url(url: str, config: Config) -> tuple[str, SQLiteOptions]:
    """Split ``sqlite:///relative.db?opt=v`` or ``sqlite:////abs/path.db`` into an absolute path
    and options (config section ``sqlite:`` < URL query).

    :raises ConfigError: a malformed URL, an in-memory path or a bad option.
    """
    path, query = _split(url)
    opts = parse_options(
        SQLiteOptions, "sqlite", config.section("sqlite"), dict(parse_qsl(query, keep_blank_values=True))
    )
    return path, opts


class SQLiteTransport(Transport):
    """A ``sqlite://`` URL and ``sqlite:`` section, parsed once; its connection is the
    :class:`~machinery.builtin.sqlite._db.Database` of the file, which the broker, backend and
    lock on that URL share (closed with the last of them).

    :param url: ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db`` (options may
        follow as a query string).
    :param config: the core configuration (its ``sqlite:`` section).
    :raises ConfigError: a malformed URL or option.
    """

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {
        "broker": "machinery.builtin.sqlite.broker:SQLiteBroker",
        "backend": "machinery.builtin.sqlite.backend:SQLiteBackend",
        "lock": "machinery.builtin.sqlite.lock:SQLiteLock",
    }

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        path, options = parse_url(url, config)
        #: The database file (absolute).
        self.path: str = path
        #: The ``sqlite:`` section and the URL's query options.
        self.options: SQLiteOptions = options

    @classmethod
    def normalize_url(cls, url: str) -> str:
        """The URL with the file's absolute path, so that ``sqlite:///q.db`` and
        ``sqlite:////<cwd>/q.db`` share one transport (and one after a ``chdir`` does not)."""
        try:
            path, query = _split(url)
        except ConfigError:
            return super().normalize_url(url)  # the constructor raises it
        return f"sqlite:///{path}?{query}" if query else f"sqlite:///{path}"

    def open(self) -> Database:
        """The file's database handle (nothing is opened until its first statement)."""
        from machinery.builtin.sqlite._db import Database

        return Database(self.path, self.options)

    def close_connection(self, connection: Database) -> None:
        """Close the pool's idle connections (those in use are closed when given back)."""
        connection.close()

    @contextlib.contextmanager
    def translate(
        self, op: str, error: type[SQLiteBrokerError | SQLiteBackendError | SQLiteLockError]
    ) -> Iterator[None]:
        """Turn a :class:`sqlite3.Error` raised inside into ``error``, naming the file and ``op``."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self.translated(exc, op, error) from exc

    def translated(
        self, exc: sqlite3.Error, op: str, error: type[SQLiteBrokerError | SQLiteBackendError | SQLiteLockError]
    ) -> SQLiteBrokerError | SQLiteBackendError | SQLiteLockError:
        """``exc`` as ``error``, naming the file and ``op`` (its cause set to ``exc``)."""
        problem, reason = describe_error(exc, self.options.busy_timeout)
        out = error(self.path, problem, reason, op)
        out.__cause__ = exc
        return out


class SQLiteRole:
    """What the embedded broker, backend and lock share: their :class:`SQLiteTransport` (its
    path, options and database) and error translation into :attr:`error_class`."""

    #: The error a failed statement becomes.
    error_class: ClassVar[type[SQLiteBrokerError] | type[SQLiteBackendError] | type[SQLiteLockError]]
    #: The transport that handed this role out (or that it found, built directly).
    transport: Transport | None
    _transport: SQLiteTransport
    #: The database file.
    path: str
    #: The parsed options.
    options: SQLiteOptions

    def _attach(self, url: str, config: Config, transport: SQLiteTransport | None) -> None:
        held = SQLiteTransport.attach(self, url, config, transport)
        self.transport = self._transport = held
        self.path, self.options = held.path, held.options

    @property
    def _db(self) -> Database:
        # the transport's database; a role used again after close() holds the transport again
        db: Database = self._transport.connection_for(self)
        return db

    def _translated(self, exc: sqlite3.Error, op: str) -> Exception:
        """``exc`` as :attr:`error_class`, naming the file and ``op`` (for a failure met on
        another thread: a group commit's)."""
        return self._transport.translated(exc, op, type(self).error_class)

    def _guard(self, op: str) -> contextlib.AbstractContextManager[None]:
        """Translate SQLite errors raised inside into :attr:`error_class`, naming the file."""
        return self._transport.translate(op, type(self).error_class)

    def _release_transport(self) -> None:
        self._transport.release(self)
