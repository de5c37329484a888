"""The embedded transport's URL and options: :class:`SQLiteOptions` (the ``sqlite:`` config
section or the URL's query string) and :func:`parse_url`. Re-exported by
:mod:`machinery.builtin.sqlite._db`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from machinery.config import parse_options
from machinery.errors import ConfigError

if TYPE_CHECKING:
    from machinery.config import Config

__all__ = ["SQLiteOptions", "parse_url"]

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


def parse_url(url: str, config: Config) -> tuple[str, SQLiteOptions]:
    """Split ``sqlite:///relative.db?opt=v`` or ``sqlite:////abs/path.db`` into an absolute path
    and options (config section ``sqlite:`` < URL query).

    :raises ConfigError: a malformed URL, an in-memory path or a bad option.
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
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    opts = parse_options(SQLiteOptions, "sqlite", config.section("sqlite"), query)
    return os.path.abspath(os.path.expanduser(path)), opts
