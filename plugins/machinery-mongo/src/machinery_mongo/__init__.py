"""MongoDB result backend for machinery: ``mongodb://`` and ``mongodb+srv://`` URLs.

The transport is registered lazily by name, so pymongo is imported only when a MongoDB URL is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import TransportRegistry
    from machinery_mongo.backend import MongoBackend
    from machinery_mongo.transport import MongoOptions, MongoTransport

__all__ = ["MongoBackend", "MongoOptions", "MongoTransport"]
_MODULES = {"MongoBackend": "backend", "MongoOptions": "transport", "MongoTransport": "transport"}


@hookimpl
def machinery_register_transports(registry: TransportRegistry) -> None:
    """``mongodb://`` and ``mongodb+srv://`` result backend."""
    registry.add(
        "mongodb",
        "machinery_mongo.transport:MongoTransport",
        roles={"backend"},
        section="mongodb",
        aliases=("mongodb+srv",),
    )


def __getattr__(name: str) -> object:
    # Re-export the classes without importing pymongo when the plugin is merely registered.
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(f"machinery_mongo.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
