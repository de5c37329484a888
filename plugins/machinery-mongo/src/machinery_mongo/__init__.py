"""MongoDB result backend for machinery: ``mongodb://`` and ``mongodb+srv://`` URLs.

Registered lazily by name, so pymongo is imported only when a MongoDB URL is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import Register
    from machinery_mongo.backend import MongoBackend, MongoOptions

__all__ = ["MongoBackend", "MongoOptions"]


@hookimpl
def machinery_register_backends(register: Register) -> None:
    """``mongodb://`` and ``mongodb+srv://`` result backend."""
    register("mongodb", "machinery_mongo.backend:MongoBackend", section="mongodb")
    register("mongodb+srv", "machinery_mongo.backend:MongoBackend", section="mongodb")


def __getattr__(name: str) -> object:
    # Re-export the classes without importing pymongo when the plugin is merely registered.
    if name in __all__:
        from machinery_mongo import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
