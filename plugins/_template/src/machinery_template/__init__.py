"""The template transport for machinery: ``template://host[:port]``.

This module holds only the hook implementation (and lazy re-exports). The transport is
registered as a ``"module:Class"`` string with its config section and environment variables as
plain data, so neither your client library nor your classes are imported until a
``template://`` URL is used, and reading a configuration imports nothing of them.
TEMPLATE: rename the scheme and the classes; keep in ``roles`` only those you serve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery.plugin import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import TransportRegistry
    from machinery_template.backend import TemplateBackend
    from machinery_template.broker import TemplateBroker
    from machinery_template.lock import TemplateLock
    from machinery_template.transport import TemplateOptions, TemplateTransport

__all__ = ["TemplateBackend", "TemplateBroker", "TemplateLock", "TemplateOptions", "TemplateTransport"]

#: Environment variables of the ``template:`` section -> option keys (Go Machinery's names where
#: Go has the option). TEMPLATE: keep it equal to the roles' ``env_options``.
ENV_OPTIONS: dict[str, str] = {
    "TEMPLATE_CONNECT_TIMEOUT": "connect_timeout",
    "TEMPLATE_VISIBILITY_TIMEOUT": "visibility_timeout",
}

_MODULES = {
    "TemplateBroker": "broker",
    "TemplateBackend": "backend",
    "TemplateLock": "lock",
    "TemplateOptions": "transport",
    "TemplateTransport": "transport",
}


@hookimpl
def machinery_register_transports(registry: TransportRegistry) -> None:
    """``template://``: broker, result backend and lock on one server."""
    registry.add(
        "template",
        "machinery_template.transport:TemplateTransport",
        roles={"broker", "backend", "lock"},  # TEMPLATE: the roles you serve
        section="template",
        env=ENV_OPTIONS,
        aliases=(),  # TEMPLATE: more schemes of the same server, e.g. ("templates",) for TLS
    )


def __getattr__(name: str) -> object:
    # Re-export the classes without importing the client library at registration time.
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(f"machinery_template.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
