"""The ``memory://`` transport: one :class:`MemoryTransport` per URL and configuration, whose
connection is the named store of ``memory://name`` (:class:`NamedStore`).

The stores play the part of a server: they live in the process, shared by every transport of
the same name, and outlive their connections (closing the last role of a transport leaves the
messages, states and locks in place for the next server of that name, until :func:`reset`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.builtin.memory._store import NamedStore, named_store, store_name
from machinery.transport import Transport

if TYPE_CHECKING:
    from machinery.config import Config

__all__ = ["MemoryTransport", "NamedStore"]


class MemoryTransport(Transport):
    """``memory://[name]``: the name parsed once, the named store as the connection.

    :param url: ``memory://`` (the unnamed store) or ``memory://name``.
    :param config: the core configuration (it reads no section).
    """

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {
        "broker": "machinery.builtin.memory.broker:MemoryBroker",
        "backend": "machinery.builtin.memory.backend:MemoryBackend",
        "lock": "machinery.builtin.memory.lock:MemoryLock",
    }
    #: Prefix of the store names: another transport on the memory stores (``eager://``) keeps
    #: its stores apart from ``memory://``'s with its own.
    namespace: ClassVar[str] = ""

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        #: The store's name (``namespace`` + the URL's name).
        self.name = self.namespace + store_name(url)

    def open(self) -> NamedStore:
        """The named store (created on first use in the process)."""
        return named_store(self.name)

    def close_connection(self, connection: NamedStore) -> None:
        """Nothing to close: the store stays for the next server of that name (see :func:`reset`)."""
