"""The in-process ``memory://`` transport: broker, backend and lock for tests and embedding,
registered like any plugin, and the conformance suite's reference implementation.

Everything lives in this process; ``memory://name`` selects a named store shared by every
server in the process that uses the same name (``memory://`` is the unnamed one). It honours
ETA, priority, queues, result expiry and the exactly-once chord trigger, with real threads.
It cannot survive the process, so it declares ``redelivers_unacked = False``.

Classes are named as ``"module:Class"`` strings, with their (empty) configuration section
declared as plain data, so nothing is imported until a ``memory://`` URL is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from machinery._hookimpl import hookimpl

if TYPE_CHECKING:
    from machinery.builtin.memory._store import reset
    from machinery.builtin.memory.backend import MemoryBackend
    from machinery.builtin.memory.broker import MemoryBroker
    from machinery.builtin.memory.lock import MemoryLock
    from machinery.plugins import Register

__all__ = ["MemoryBackend", "MemoryBroker", "MemoryLock", "reset"]

_LAZY = {
    "MemoryBroker": "machinery.builtin.memory.broker",
    "MemoryBackend": "machinery.builtin.memory.backend",
    "MemoryLock": "machinery.builtin.memory.lock",
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
def machinery_register_brokers(register: Register) -> None:
    """``memory://`` broker, and ``eager://`` (:mod:`machinery.eager`: tasks run when sent)."""
    register("memory", "machinery.builtin.memory.broker:MemoryBroker", section="")  # reads no section
    register("eager", "machinery.eager:EagerBroker", section="")


@hookimpl
def machinery_register_backends(register: Register) -> None:
    """``memory://`` backend, and ``eager://`` (an in-process one for eager mode)."""
    register("memory", "machinery.builtin.memory.backend:MemoryBackend", section="")
    register("eager", "machinery.eager:EagerBackend", section="")


@hookimpl
def machinery_register_locks(register: Register) -> None:
    """``memory://`` lock, and ``eager://``."""
    register("memory", "machinery.builtin.memory.lock:MemoryLock", section="")
    register("eager", "machinery.eager:EagerLock", section="")
