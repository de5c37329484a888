"""Memcached result backend for machinery: ``memcache://host1[:port1][,host2[:port2],...]``.

Registered lazily by name, so pymemcache is imported only when a ``memcache://`` URL is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import Register
    from machinery_memcache.backend import MemcacheBackend, MemcacheOptions

__all__ = ["MemcacheBackend", "MemcacheOptions"]


@hookimpl
def machinery_register_backends(register: Register) -> None:
    """``memcache://`` result backend."""
    register("memcache", "machinery_memcache.backend:MemcacheBackend", section="memcache")


def __getattr__(name: str) -> object:
    # Re-export the classes without importing pymemcache when the plugin is merely registered.
    if name in __all__:
        from machinery_memcache import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
