"""Memcached result backend for machinery: ``memcache://host1[:port1][,host2[:port2],...]``.

The transport is registered lazily by name, so pymemcache is imported only when a
``memcache://`` URL is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import TransportRegistry
    from machinery_memcache.backend import MemcacheBackend
    from machinery_memcache.transport import MemcacheOptions, MemcacheTransport

__all__ = ["MemcacheBackend", "MemcacheOptions", "MemcacheTransport"]
_MODULES = {"MemcacheBackend": "backend", "MemcacheOptions": "transport", "MemcacheTransport": "transport"}


@hookimpl
def machinery_register_transports(registry: TransportRegistry) -> None:
    """``memcache://`` result backend."""
    registry.add("memcache", "machinery_memcache.transport:MemcacheTransport", roles={"backend"}, section="memcache")


def __getattr__(name: str) -> object:
    # Re-export the classes without importing pymemcache when the plugin is merely registered.
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(f"machinery_memcache.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
