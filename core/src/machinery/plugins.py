"""The plugin host: one entry-point group, lazy per-plugin loading, a typed facade over pluggy.

Plugins are loaded on the first URL resolution, never at import. Each entry point gets its own
``try``: a failure becomes a :class:`~machinery.errors.PluginLoadError` (shown by
``machinery plugins``) and the rest still load. ``MACHINERY_DISABLE_PLUGINS=a,b`` blocks
plugins by entry-point name.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

from machinery._broadcast import Broadcast
from machinery.errors import MachineryError, PluginLoadError, UnknownSchemeError
from machinery.interfaces import Backend, Broker, Lock
from machinery.transport import Transport, TransportRegistry, TransportSpec

if TYPE_CHECKING:
    import argparse
    import logging

    import pluggy

    from machinery.config import Config
    from machinery.events import TaskEvent, WorkerEvent
    from machinery.signature import Signature

__all__ = [
    "DEFAULT_PLUGINS",
    "NAME",
    "PluginHost",
    "PluginInfo",
    "Register",
    "get_plugin_host",
    "scheme_of",
]

#: The pluggy project name, the entry-point group and the hookimpl marker name.
NAME = "machinery"

#: Modules registered before any entry point: the built-in transports and the logging plugin.
DEFAULT_PLUGINS = (
    "machinery.builtin.memory",
    "machinery.builtin.sqlite",
    "machinery.logging_plugin",
)

#: Which distribution serves a scheme, for the "pip install ..." hint.
KNOWN_SCHEMES = {
    "redis": "machinery-redis",
    "rediss": "machinery-redis",
    "redis+socket": "machinery-redis",
    "amqp": "machinery-amqp",
    "amqps": "machinery-amqp",
    "sqs": "machinery-sqs",
    "https": "machinery-sqs",
    "http": "machinery-sqs",
    "dynamodb": "machinery-sqs",
    "gcppubsub": "machinery-gcp",
    "mongodb": "machinery-mongo",
    "mongodb+srv": "machinery-mongo",
    "memcache": "machinery-memcache",
    "nats": "machinery-nats",
}

Kind = Literal["broker", "backend", "lock"]
T = TypeVar("T")


class Register(Protocol):
    """The callable the ``machinery_register_*`` hooks receive.

    ``register(scheme, target, section=..., env=...)``: ``target`` is the class or its
    ``"module:Class"`` string (imported only when a URL with that scheme is used). ``section``
    and ``env`` declare, as plain data, the config section the class reads and its
    environment variables (``{"REDIS_MAX_IDLE": "max_idle"}``), so that reading a
    configuration imports no plugin's client library; they must equal the class's
    ``config_section`` and ``env_options``; ``section=""`` declares a class that reads no section.
    Without ``section``, the class is imported to read them.
    """

    def __call__(
        self,
        scheme: str,
        target: type[Any] | str,
        /,
        *,
        section: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None: ...


def _log() -> logging.Logger:
    # ``logging`` is imported when there is something to log, not with this module.
    import logging

    return logging.getLogger("machinery.plugins")


def scheme_of(url: str) -> str:
    """The scheme of a transport URL (``redis+socket`` for ``redis+socket://...``)."""
    head, sep, _ = url.partition("://")
    if not sep:
        raise UnknownSchemeError(url or "(empty)", "transport", [], None)
    return head.lower()


@dataclass
class PluginInfo:
    """What ``machinery plugins`` shows about one plugin.

    :param name: entry-point name (or module name for built-ins).
    :param distribution: the providing distribution.
    :param version: its version.
    :param schemes: ``{"broker": [...], "backend": [...], "lock": [...]}``.
    :param hooks: the hook names it implements.
    :param error: why it failed to load, if it did.
    """

    name: str
    distribution: str
    version: str
    schemes: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


class PluginHost:
    """Typed facade over the pluggy manager; use :func:`get_plugin_host` for the shared one."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        # pluggy (and with it ``inspect``) is imported by the first host, not by ``import machinery``.
        import pluggy

        from machinery import hookspecs

        self.pm: pluggy.PluginManager = pluggy.PluginManager(NAME)
        self.pm.add_hookspecs(hookspecs)
        self._load_entry_points = load_entry_points
        self._loaded = False
        self._lock = threading.RLock()
        self._registry: dict[str, dict[str, tuple[type[Any] | str, str]]] = {
            "broker": {},
            "backend": {},
            "lock": {},
        }
        self._resolved: dict[tuple[str, str], type[Any]] = {}
        #: (role, scheme or alias) -> the transport declared for it (``machinery_register_transports``).
        self._transports: dict[tuple[str, str], TransportSpec] = {}
        #: (kind, scheme) -> (config section, env variables), as declared at registration.
        self._meta: dict[tuple[str, str], tuple[str | None, Mapping[str, str]]] = {}
        self.failures: list[PluginLoadError] = []
        self._infos: dict[str, PluginInfo] = {}
        # the task hooks run several times per task: called without pluggy's dispatch
        hook = self.pm.hook
        self._task_received = Broadcast(hook.machinery_task_received)
        self._task_started = Broadcast(hook.machinery_task_started)
        self._task_succeeded = Broadcast(hook.machinery_task_succeeded)
        self._task_failed = Broadcast(hook.machinery_task_failed)
        self._task_retried = Broadcast(hook.machinery_task_retried)

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the default plugins and every entry point once (thread-safe, idempotent)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            from importlib import import_module

            from machinery import __version__

            blocked = {b.strip() for b in os.environ.get("MACHINERY_DISABLE_PLUGINS", "").split(",") if b.strip()}
            for mod_name in DEFAULT_PLUGINS:
                mod = import_module(mod_name)
                self.pm.register(mod, name=mod_name)
                self._infos[mod_name] = PluginInfo(mod_name, "machinery-core", __version__)
            if self._load_entry_points:
                self._load_from_entry_points(blocked)
            self.pm.check_pending()
            self._collect()
            self._loaded = True

    def _load_from_entry_points(self, blocked: set[str]) -> None:
        from machinery._entrypoints import entry_points  # importlib.metadata's reading, lighter

        for ep in entry_points(NAME):
            dist_name, version = ep.dist_name, ep.dist_version
            if ep.name in blocked:
                self.pm.set_blocked(ep.name)
                _log().info("plugin %s blocked by MACHINERY_DISABLE_PLUGINS", ep.name)
                continue
            if self.pm.has_plugin(ep.name) or self.pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - one bad plugin must not stop the others
                err = PluginLoadError(ep.name, f"{dist_name} {version}", f"{type(exc).__name__}: {exc}")
                self.failures.append(err)
                self._infos[ep.name] = PluginInfo(ep.name, dist_name, version, error=err.reason)
                _log().warning("%s", err)
                continue
            self._infos[ep.name] = PluginInfo(ep.name, dist_name, version)

    def _collect(self) -> None:
        for impl in self.pm.hook.machinery_register_transports.get_hookimpls():
            info = self._infos.get(impl.plugin_name)
            dist = info.distribution if info else impl.plugin_name
            impl.function(registry=TransportRegistry(dist, self._transport_adder(impl.plugin_name)))
        hooks = {
            "broker": self.pm.hook.machinery_register_brokers,
            "backend": self.pm.hook.machinery_register_backends,
            "lock": self.pm.hook.machinery_register_locks,
        }
        for kind, caller in hooks.items():
            for impl in caller.get_hookimpls():
                info = self._infos.get(impl.plugin_name)
                dist = info.distribution if info else impl.plugin_name
                impl.function(register=self._registrar(cast(Kind, kind), dist, impl.plugin_name))
        for name, info in self._infos.items():
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                info.hooks = sorted(
                    h.name for h in self.pm.get_hookcallers(plugin) or [] if h.name.startswith("machinery_")
                )

    def _transport_adder(self, plugin_name: str) -> Callable[[TransportSpec], None]:
        def add(spec: TransportSpec) -> None:
            info = self._infos.get(plugin_name)
            for scheme in spec.schemes:
                for kind in sorted(spec.roles):
                    other = self._transports.get((kind, scheme))
                    if other is not None and other.distribution != spec.distribution:
                        raise MachineryError(
                            f"{kind} scheme {scheme!r} is claimed by both {other.distribution} and "
                            f"{spec.distribution}; uninstall one or block it with MACHINERY_DISABLE_PLUGINS"
                        )
                    self._transports[(kind, scheme)] = spec
                    if info is not None:
                        info.schemes.setdefault(kind, []).append(scheme)

        return add

    def _registrar(self, kind: Kind, dist: str, plugin_name: str) -> Register:
        def register(
            scheme: str, cls: type[Any] | str, /, *, section: str | None = None, env: Mapping[str, str] | None = None
        ) -> None:
            scheme = scheme.lower()
            table = self._registry[kind]
            spec = self._transports.get((kind, scheme))
            owner = spec.distribution if spec is not None else None
            if owner is None and scheme in table:
                owner = table[scheme][1]
            if owner is not None and owner != dist:
                raise MachineryError(
                    f"{kind} scheme {scheme!r} is claimed by both {owner} and {dist}; "
                    f"uninstall one or block it with MACHINERY_DISABLE_PLUGINS"
                )
            table[scheme] = (cls, dist)
            if section is not None:
                # section="" declares a class that reads no section (its config_section is None)
                self._meta[(kind, scheme)] = (section or None, dict(env or {}))
            info = self._infos.get(plugin_name)
            if info is not None:
                info.schemes.setdefault(kind, []).append(scheme)

        return register

    # -- typed facade -------------------------------------------------------------------------

    def schemes(self, kind: Kind) -> list[str]:
        """The URL schemes registered for ``kind``."""
        self.load()
        served = {s for k, s in self._transports if k == kind}
        return sorted(served | set(self._registry[kind]))

    def transport_class(self, url: str, kind: Kind = "broker") -> type[Transport] | None:
        """The :class:`~machinery.transport.Transport` serving ``kind`` for ``url``'s scheme, or
        None when that is a class registered alone (``machinery_register_brokers``...) or nothing."""
        self.load()
        spec = self._transports.get((kind, scheme_of(url)))
        return spec.resolve() if spec is not None else None

    def make(self, kind: Kind, url: str, config: Config) -> Any:
        """A ``kind`` role for ``url``: handed out by the shared transport of ``url`` and
        ``config`` when one serves the scheme, else built from its registered class.

        :raises UnknownSchemeError: no plugin serves the scheme for ``kind``.
        :raises ConfigError: a bad URL or option (``TypeError``/``ValueError`` from a role class
            that does not translate its own).
        """
        self.load()
        spec = self._transports.get((kind, scheme_of(url)))
        if spec is not None:
            transport = spec.resolve().shared(url, config)
            return getattr(transport, kind)()
        cls: type[Any] = self._class(kind, url, object)
        return cls(url, config)

    def _class(self, kind: Kind, url: str, base: type[T]) -> type[T]:
        self.load()
        scheme = scheme_of(url)
        key = (kind, scheme)
        cls = self._resolved.get(key)
        if cls is not None:
            return cls
        spec = self._transports.get(key)
        if spec is not None:
            role_cls = spec.resolve().role_class(kind)
            if not (isinstance(role_cls, type) and issubclass(role_cls, base)):
                raise PluginLoadError(scheme, spec.distribution, f"{role_cls!r} is not a {base.__name__} subclass")
            self._resolved[key] = role_cls
            return role_cls
        entry = self._registry[kind].get(scheme)
        if entry is None:
            hint = KNOWN_SCHEMES.get(scheme)
            for f in self.failures:
                if hint and f.distribution.startswith(hint):
                    raise UnknownSchemeError(scheme, kind, self.schemes(kind), None) from f
            raise UnknownSchemeError(scheme, kind, self.schemes(kind), hint)
        target, dist = entry
        if isinstance(target, str):
            from importlib import import_module

            mod_name, _, attr = target.partition(":")
            try:
                target = getattr(import_module(mod_name), attr)
            except Exception as exc:
                raise PluginLoadError(scheme, dist, f"cannot import {entry[0]}: {exc}") from exc
        if not (isinstance(target, type) and issubclass(target, base)):
            raise PluginLoadError(scheme, dist, f"{target!r} is not a {base.__name__} subclass")
        self._resolved[key] = target
        return target

    def broker_class(self, url: str) -> type[Broker]:
        """The :class:`Broker` class serving ``url``'s scheme."""
        return self._class("broker", url, Broker)  # type: ignore[type-abstract]

    def backend_class(self, url: str) -> type[Backend]:
        """The :class:`Backend` class serving ``url``'s scheme."""
        return self._class("backend", url, Backend)  # type: ignore[type-abstract]

    def lock_class(self, url: str) -> type[Lock]:
        """The :class:`Lock` class serving ``url``'s scheme."""
        return self._class("lock", url, Lock)  # type: ignore[type-abstract]

    def _declared(self, kind: Kind, scheme: str) -> tuple[str | None, Mapping[str, str]]:
        """The section and environment variables of a registered class: as declared at
        registration, else read from the class (which imports it)."""
        spec = self._transports.get((kind, scheme))
        if spec is not None:
            return spec.section, spec.env
        meta = self._meta.get((kind, scheme))
        if meta is not None:
            return meta
        try:
            cls = self._class(kind, f"{scheme}://", object)
        except MachineryError:
            return None, {}
        return getattr(cls, "config_section", None), dict(getattr(cls, "env_options", None) or {})

    def config_sections(self) -> set[str]:
        """Config sections owned by any registered transport (for unknown-key errors)."""
        self.load()
        sections: set[str] = set()
        sections.update(spec.section for spec in self._transports.values() if spec.section)
        for kind, table in self._registry.items():
            for scheme in table:
                section, _ = self._declared(cast(Kind, kind), scheme)
                if section:
                    sections.add(section)
        return sections

    def env_options(self) -> dict[str, tuple[str, str]]:
        """Environment variable -> (config section, option) for every registered transport."""
        self.load()
        out: dict[str, tuple[str, str]] = {}
        for spec in self._transports.values():
            for var, key in spec.env.items():
                out[var] = (cast(str, spec.section), key)
        for kind, table in self._registry.items():
            for scheme in table:
                section, env = self._declared(cast(Kind, kind), scheme)
                if section:
                    for var, key in env.items():
                        out[var] = (section, key)
        return out

    def infos(self) -> list[PluginInfo]:
        """Every plugin: distribution, version, schemes, hooks, load error."""
        self.load()
        return list(self._infos.values())

    # -- lifecycle hooks ----------------------------------------------------------------------

    def task_received(self, event: TaskEvent) -> None:
        """Broadcast ``machinery_task_received``."""
        self._task_received(event)

    def task_started(self, event: TaskEvent) -> None:
        """Broadcast ``machinery_task_started``."""
        self._task_started(event)

    def task_succeeded(self, event: TaskEvent) -> None:
        """Broadcast ``machinery_task_succeeded``."""
        self._task_succeeded(event)

    def task_failed(self, event: TaskEvent) -> None:
        """Broadcast ``machinery_task_failed``."""
        self._task_failed(event)

    def task_retried(self, event: TaskEvent) -> None:
        """Broadcast ``machinery_task_retried``."""
        self._task_retried(event)

    def worker_started(self, event: WorkerEvent) -> None:
        """Broadcast ``machinery_worker_started``."""
        self.pm.hook.machinery_worker_started(event=event)

    def worker_stopped(self, event: WorkerEvent) -> None:
        """Broadcast ``machinery_worker_stopped``."""
        self.pm.hook.machinery_worker_stopped(event=event)

    def before_publish(self, signature: Signature) -> None:
        """Broadcast ``machinery_before_publish``."""
        self.pm.hook.machinery_before_publish(signature=signature)

    def after_publish(self, signature: Signature, error: BaseException | None) -> None:
        """Broadcast ``machinery_after_publish``."""
        self.pm.hook.machinery_after_publish(signature=signature, error=error)

    def fused_publisher(self, broker: Broker, backend: Backend) -> Callable[[bytes, Signature], None] | None:
        """The first ``machinery_fused_publisher`` answer for this pair, or None."""
        self.load()
        fused: Callable[[bytes, Signature], None] | None = self.pm.hook.machinery_fused_publisher(
            broker=broker, backend=backend
        )
        return fused

    def has_publish_observers(self) -> bool:
        """True when a plugin implements ``machinery_before_publish`` or ``machinery_after_publish``
        (the server skips both calls otherwise)."""
        self.load()
        hook = self.pm.hook
        return bool(hook.machinery_before_publish.get_hookimpls() or hook.machinery_after_publish.get_hookimpls())

    def cli_arguments(self, command: str, parser: argparse.ArgumentParser) -> None:
        """Broadcast ``machinery_cli_arguments``."""
        self.load()
        self.pm.hook.machinery_cli_arguments(command=command, parser=parser)

    def cli_commands(self, add_command: Callable[[str, str], argparse.ArgumentParser]) -> None:
        """Broadcast ``machinery_cli_commands``."""
        self.load()
        self.pm.hook.machinery_cli_commands(add_command=add_command)

    def cli_started(self, command: str, args: argparse.Namespace) -> None:
        """Broadcast ``machinery_cli_started``."""
        self.pm.hook.machinery_cli_started(command=command, args=args)

    def has_task_observers(self, *, besides: tuple[str, ...] = ()) -> Mapping[str, bool]:
        """Which task hooks have implementations (the worker skips building unused events),
        not counting those of the plugins named in ``besides``."""
        self.load()
        names = ("received", "started", "succeeded", "failed", "retried")
        return {
            n: any(i.plugin_name not in besides for i in getattr(self.pm.hook, f"machinery_task_{n}").get_hookimpls())
            for n in names
        }


_host: PluginHost | None = None
_host_lock = threading.Lock()


def get_plugin_host() -> PluginHost:
    """The process-wide plugin host (created on first use; plugins load on first resolution)."""
    global _host
    if _host is None:
        with _host_lock:
            if _host is None:
                _host = PluginHost()
    return _host
