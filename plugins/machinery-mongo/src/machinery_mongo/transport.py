"""The MongoDB transport: the URL and the ``mongodb:`` section parsed once, one ``MongoClient``
per URL and configuration (shared by every backend on it, closed with the last), the
collections made ready once per connection, and pymongo's errors translated.

pymongo is imported here, so only when a ``mongodb://`` URL is used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote

from bson.errors import InvalidDocument
from pymongo import MongoClient
from pymongo.errors import ConfigurationError, ConnectionFailure, InvalidURI, PyMongoError
from pymongo.uri_parser import parse_uri

from machinery.plugin import BackendConnectionError, BackendError, ConfigError, Transport, parse_options, redact_url

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from machinery.plugin import Config

__all__ = ["DEFAULT_DATABASE", "MongoOptions", "MongoTransport"]

#: Go Machinery's database when none is configured.
DEFAULT_DATABASE = "machinery"

Doc = dict[str, Any]


@dataclass(frozen=True)
class MongoOptions:
    """The ``mongodb:`` config section.

    :param database: the database (Go's ``MongoDB.Database``); default: the URL path, else
        ``machinery``.
    :param server_selection_timeout: seconds an operation waits for a reachable server before
        failing with :class:`~machinery.errors.BackendConnectionError` (the URL's
        ``serverSelectionTimeoutMS`` wins when present).
    """

    database: str = ""
    server_selection_timeout: float = 5.0


def _url_database(url: str) -> str:
    # mongodb://user:pass@h1,h2/db?options: the path after the host list names the database.
    path = url.partition("://")[2].rpartition("@")[2].partition("/")[2]
    return unquote(path.partition("?")[0])


class MongoTransport(Transport):
    """A ``mongodb://`` or ``mongodb+srv://`` URL and the ``mongodb:`` section; its connection
    is the ``MongoClient`` (which connects on its first operation).

    :param url: the MongoDB URL (a ``mongodb://`` one is checked here; ``mongodb+srv://`` needs
        DNS and is checked on first use).
    :param config: the core config.
    :raises ConfigError: a bad URL or option.
    """

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {"backend": "machinery_mongo.backend:MongoBackend"}
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = (ConnectionFailure,)

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        #: The ``mongodb:`` section.
        self.options = parse_options(MongoOptions, "mongodb", config.section("mongodb"))
        if url.startswith("mongodb://"):
            try:
                parse_uri(url)
            except (InvalidURI, ConfigurationError, ValueError) as exc:
                raise ConfigError("result_backend", f"bad MongoDB URL {redact_url(url)!r}: {exc}") from None
        #: The database holding the collections.
        self.database = self.options.database or _url_database(url) or DEFAULT_DATABASE
        self._collections: dict[str, Collection[Doc]] = {}
        self._setup_lock = threading.Lock()

    def open(self) -> MongoClient[Doc]:
        """A new ``MongoClient`` (no I/O until its first operation)."""
        if "serverselectiontimeoutms" in self.url.lower():  # the URL's setting wins
            return MongoClient(self.url)
        return MongoClient(self.url, serverSelectionTimeoutMS=int(self.options.server_selection_timeout * 1000))

    def close_connection(self, connection: MongoClient[Doc]) -> None:
        """Close the client's connections (the collections made ready are forgotten)."""
        with self._setup_lock:
            self._collections.clear()
        connection.close()

    def collection(
        self, role: object, name: str, setup: Callable[[Collection[Doc]], object] | None = None
    ) -> Collection[Doc]:
        """Collection ``name`` of :attr:`database` on the shared client, for ``role``;
        ``setup`` (its indexes) runs on its first use, once per connection.

        :raises BackendConnectionError: the server cannot be reached.
        :raises BackendError: MongoDB refused the set-up.
        """
        coll = self._collections.get(name)
        if coll is None:
            with self._setup_lock, self.errors("connecting"):
                coll = self._collections.get(name)
                if coll is None:
                    coll = self.connection_for(role)[self.database][name]
                    if setup is not None:
                        setup(coll)
                    self._collections[name] = coll
        return coll

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Translate pymongo's exceptions raised inside into machinery's (``what`` names the
        operation): :class:`BackendConnectionError` for an unreachable server, else
        :class:`BackendError`."""
        try:
            yield
        except ConnectionFailure as exc:
            raise BackendConnectionError(f"MongoDB at {redact_url(self.url)} is unreachable ({what}): {exc}") from exc
        except (InvalidDocument, OverflowError) as exc:
            raise BackendError(f"{what}: MongoDB cannot store it: {exc}") from exc
        except PyMongoError as exc:
            raise BackendError(f"MongoDB failed ({what}): {exc}") from exc
