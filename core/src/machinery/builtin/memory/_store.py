"""The memory transport's stores: one per ``memory://name`` and role, shared by every server of
this process that uses the same name (``memory://`` is the unnamed one). A
:class:`~machinery.builtin.memory.transport.MemoryTransport`'s connection is the
:class:`NamedStore` of its name."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from machinery.interfaces import DeadLetter

__all__ = ["NamedStore", "named_store", "reset", "store_name"]


@dataclass
class _Queue:
    ready: list[tuple[int, int, bytes]] = field(default_factory=list)  # (-priority, seq, body)


@dataclass
class _BrokerStore:
    cond: threading.Condition = field(default_factory=threading.Condition)
    queues: dict[str, _Queue] = field(default_factory=dict)
    delayed: list[tuple[float, int, str, int, bytes]] = field(default_factory=list)  # (due, seq, queue, prio, body)
    unacked: dict[int, tuple[str, int, bytes]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)


@dataclass
class _BackendStore:
    cond: threading.Condition = field(default_factory=threading.Condition)
    records: dict[str, tuple[float, Any]] = field(default_factory=dict)  # uuid -> (expires_at, record)
    workers: dict[str, tuple[float, bytes]] = field(default_factory=dict)  # worker id -> (expires_at, record)
    revoked: dict[str, tuple[int, bool, float]] = field(default_factory=dict)  # uuid -> (seq, terminate, expires_at)
    revoked_seq: int = 0
    rates: Any = None  # LocalRateLimiter, created on first use


@dataclass
class _LockStore:
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: dict[str, tuple[str, float]] = field(default_factory=dict)


_brokers: dict[str, _BrokerStore] = {}
_backends: dict[str, _BackendStore] = {}
_locks: dict[str, _LockStore] = {}
_registry_lock = threading.Lock()


def store_name(url: str) -> str:
    """The store a ``memory://name`` URL names ("" for ``memory://``)."""
    return url.partition("://")[2].strip("/")


_name = store_name  # the name machinery.testing.fixtures reads


def _store(table: dict[str, Any], name: str, factory: type[Any]) -> Any:
    with _registry_lock:
        st = table.get(name)
        if st is None:
            st = table[name] = factory()
        return st


@dataclass(frozen=True)
class NamedStore:
    """The stores of one name: what a memory transport connects to. Each role's store is made on
    first use and looked up on every access, so a role made after :func:`reset` gets a new one.

    :param name: the store's name.
    """

    name: str

    @property
    def broker(self) -> _BrokerStore:
        """The queues, delayed and unacknowledged messages and dead letters."""
        st: _BrokerStore = _store(_brokers, self.name, _BrokerStore)
        return st

    @property
    def backend(self) -> _BackendStore:
        """The task states, group records, worker registry, revocations and rate limits."""
        st: _BackendStore = _store(_backends, self.name, _BackendStore)
        return st

    @property
    def lock(self) -> _LockStore:
        """The held locks."""
        st: _LockStore = _store(_locks, self.name, _LockStore)
        return st


def named_store(name: str) -> NamedStore:
    """The stores called ``name``."""
    return NamedStore(name)


def reset() -> None:
    """Forget every memory store in this process (for tests)."""
    with _registry_lock:
        _brokers.clear()
        _backends.clear()
        _locks.clear()
