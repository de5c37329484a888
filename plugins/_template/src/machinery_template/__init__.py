"""The template transport for machinery: ``template://<name>``.

This module holds only the hook implementations (and re-exports). Classes are registered as
``"module:Class"`` strings, so your client library is imported only when a ``template://`` URL is
actually used. TEMPLATE: rename the scheme and the classes; drop the hooks for the roles your
transport does not serve (a result backend only keeps ``machinery_register_backends``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import Register
    from machinery_template.backend import TemplateBackend
    from machinery_template.broker import TemplateBroker, TemplateOptions
    from machinery_template.lock import TemplateLock

__all__ = ["TemplateBackend", "TemplateBroker", "TemplateLock", "TemplateOptions"]

#: Environment variables of the ``template:`` section (Go-style names -> option keys), declared
#: with the registration as plain data, so that reading a configuration never imports your
#: client library. TEMPLATE: keep it equal to the classes' ``env_options`` (the suite checks).
ENV_OPTIONS: dict[str, str] = {"TEMPLATE_POLL_INTERVAL": "poll_interval"}

_MODULES = {
    "TemplateBroker": "broker",
    "TemplateOptions": "broker",
    "TemplateBackend": "backend",
    "TemplateLock": "lock",
}


@hookimpl
def machinery_register_brokers(register: Register) -> None:
    """``template://`` broker."""
    register("template", "machinery_template.broker:TemplateBroker", section="template", env=ENV_OPTIONS)


@hookimpl
def machinery_register_backends(register: Register) -> None:
    """``template://`` result backend."""
    register("template", "machinery_template.backend:TemplateBackend", section="")  # reads no section


@hookimpl
def machinery_register_locks(register: Register) -> None:
    """``template://`` lock (for periodic tasks)."""
    register("template", "machinery_template.lock:TemplateLock", section="")  # reads no section


def __getattr__(name: str) -> object:
    # Re-export the classes without importing the client library at registration time.
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(f"machinery_template.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
