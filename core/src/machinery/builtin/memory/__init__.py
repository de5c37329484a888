"""The in-process ``memory://`` transport: broker, backend and lock for tests and embedding,
registered like any plugin, and the conformance suite's reference implementation.

Everything lives in this process; ``memory://name`` selects a named store shared by every
server in the process that uses the same name (``memory://`` is the unnamed one). It honours
ETA, priority, queues, result expiry and the exactly-once chord trigger, with real threads.
It cannot survive the process, so it declares ``redelivers_unacked = False``.

:class:`~machinery.builtin.memory.transport.MemoryTransport` (the name, parsed once, and the
named store as its connection) hands out the broker, backend and lock. It is registered as a
``"module:Class"`` string reading no configuration section, so nothing is imported until a
``memory://`` URL is used. ``eager://`` (:mod:`machinery.eager`) is registered here too: it is
the memory transport on stores of its own, with a broker that runs tasks when they are sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from machinery._hookimpl import hookimpl

if TYPE_CHECKING:
    from machinery.builtin.memory._store import reset
    from machinery.builtin.memory.backend import MemoryBackend
    from machinery.builtin.memory.broker import MemoryBroker
    from machinery.builtin.memory.lock import MemoryLock
    from machinery.builtin.memory.transport import MemoryTransport
    from machinery.transport import TransportRegistry

__all__ = ["MemoryBackend", "MemoryBroker", "MemoryLock", "MemoryTransport", "reset"]

_LAZY = {
    "MemoryBroker": "machinery.builtin.memory.broker",
    "MemoryBackend": "machinery.builtin.memory.backend",
    "MemoryLock": "machinery.builtin.memory.lock",
    "MemoryTransport": "machinery.builtin.memory.transport",
    "reset": "machinery.builtin.memory._store",
}


def __getattr__(name: str) -> Any:
    # The classes are imported on first use: registering the plugin imports none of them.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module), name)


@hookimpl
def machinery_register_transports(registry: TransportRegistry) -> None:
    """``memory://``: broker, backend and lock in this process; ``eager://``: tasks run when sent."""
    roles = {"broker", "backend", "lock"}
    registry.add("memory", "machinery.builtin.memory.transport:MemoryTransport", roles=roles)
    registry.add("eager", "machinery.eager:EagerTransport", roles=roles)
