"""Transports: one object per URL owning what its broker, backend and lock share.

A plugin declares its transport as plain data in ``machinery_register_transports``::

    @hookimpl
    def machinery_register_transports(registry: TransportRegistry) -> None:
        registry.add(
            "redis",
            "machinery_redis.transport:RedisTransport",
            roles={"broker", "backend", "lock"},
            section="redis",
            env={"REDIS_MAX_IDLE": "max_idle"},
            aliases=("rediss", "redis+socket"),
        )

so that :class:`~machinery.config.Config` validates the ``redis:`` section and the environment
variables without importing the plugin. A :class:`Transport` is built from ``(url, config)``:
it parses both once, opens its connection on first use, and hands out the roles it declares
(:meth:`Transport.broker`, :meth:`Transport.backend`, :meth:`Transport.lock`). The process keeps
one transport per normalized URL and configuration (:meth:`Transport.shared`), so a broker and
a backend on the same server share one by construction; the connection is closed when the last
role handed out is closed (the count is kept here, not in each plugin).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, cast

from machinery.errors import PluginLoadError

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.interfaces import Backend, Broker, Lock
    from machinery.wire.model import Signature

__all__ = ["ROLES", "Transport", "TransportRegistry", "TransportSpec"]

Role = Literal["broker", "backend", "lock"]
#: The roles a transport can serve.
ROLES: tuple[Role, ...] = ("broker", "backend", "lock")
TransportT = TypeVar("TransportT", bound="Transport")


@dataclass(frozen=True)
class TransportSpec:
    """One ``registry.add(...)``: what the host knows about a transport before importing it.

    :param scheme: the main URL scheme.
    :param target: the :class:`Transport` subclass or its ``"module:Class"`` string.
    :param roles: the roles it serves (a subset of ``broker``, ``backend``, ``lock``).
    :param section: the config section its options live in (None: it reads none).
    :param env: environment variable -> option of that section.
    :param aliases: more schemes served by the same transport.
    :param distribution: the distribution that registered it.
    """

    scheme: str
    target: type[Transport] | str
    roles: frozenset[str]
    section: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    distribution: str = ""

    @property
    def schemes(self) -> tuple[str, ...]:
        """The main scheme and its aliases."""
        return (self.scheme, *self.aliases)

    def resolve(self) -> type[Transport]:
        """Import the transport class (on first use of one of its schemes).

        :raises PluginLoadError: it cannot be imported, or is not a :class:`Transport`.
        """
        target = self.target
        if isinstance(target, str):
            target = _import(target, self.scheme, self.distribution)
        if not (isinstance(target, type) and issubclass(target, Transport)):
            raise PluginLoadError(self.scheme, self.distribution, f"{target!r} is not a Transport subclass")
        missing = self.roles - set(target.role_classes)
        if missing:
            raise PluginLoadError(
                self.scheme, self.distribution, f"{target.__name__} declares no class for {sorted(missing)}"
            )
        return target


def _import(target: str, scheme: str, dist: str) -> Any:
    from importlib import import_module

    mod_name, _, attr = target.partition(":")
    try:
        return getattr(import_module(mod_name), attr)
    except Exception as exc:
        raise PluginLoadError(scheme, dist, f"cannot import {target}: {exc}") from exc


class TransportRegistry:
    """What ``machinery_register_transports`` receives: call :meth:`add` once per transport.

    :param distribution: the registering plugin's distribution (for error messages).
    :param sink: called with each :class:`TransportSpec` added.
    """

    def __init__(self, distribution: str, sink: Callable[[TransportSpec], None]) -> None:
        self.distribution = distribution
        self._sink = sink

    def add(
        self,
        scheme: str,
        target: type[Transport] | str,
        /,
        *,
        roles: Iterable[str],
        section: str | None = None,
        env: Mapping[str, str] | None = None,
        aliases: Iterable[str] = (),
    ) -> None:
        """Declare a transport, as plain data (nothing is imported until a URL uses it).

        :param scheme: the main URL scheme (``"redis"``).
        :param target: the :class:`Transport` subclass, or ``"module:Class"``.
        :param roles: which of ``"broker"``, ``"backend"``, ``"lock"`` it hands out.
        :param section: the config section it reads (``"redis"``); None when it reads none.
        :param env: environment variable -> option of ``section`` (``{"REDIS_MAX_IDLE": "max_idle"}``).
        :param aliases: more schemes it serves (``("rediss", "redis+socket")``).
        :raises ValueError: no role, or a role that does not exist.
        """
        role_set = frozenset(roles)
        if not role_set or not role_set <= set(ROLES):
            raise ValueError(f"roles must be a non-empty subset of {ROLES}, got {sorted(role_set)}")
        if env and not section:
            raise ValueError("environment variables need the section they set options of")
        spec = TransportSpec(
            scheme.lower(),
            target,
            role_set,
            section or None,
            dict(env or {}),
            tuple(a.lower() for a in aliases),
            self.distribution,
        )
        self._sink(spec)


# -- the process-wide cache ---------------------------------------------------------------------

_cache: dict[tuple[Any, ...], Transport] = {}
_cache_lock = threading.Lock()


def _reinit_after_fork() -> None:  # a lock held by another thread at fork would never be released
    global _cache_lock
    _cache_lock = threading.Lock()
    for t in list(_cache.values()):
        t._guard = threading.RLock()


os.register_at_fork(after_in_child=_reinit_after_fork)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(_freeze(v) for v in value)
    return value


def config_key(config: Config) -> tuple[Any, ...]:
    """A hashable value equal for equal configurations (transport options included)."""
    import dataclasses

    return tuple((f.name, _freeze(getattr(config, f.name))) for f in dataclasses.fields(config))


class Transport:
    """One URL's connection, options and roles; subclass it in a plugin's ``transport.py``.

    A subclass declares :attr:`role_classes` (role -> class or ``"module:Class"``), parses its
    URL and options once in ``__init__``, and overrides :meth:`open` and :meth:`close_connection`.
    Role classes take ``(url, config, *, transport=None)``, call :meth:`attach` in their
    constructor (which finds the shared transport when they are built directly) and
    :meth:`release` in ``close()``; they read :attr:`connection` when they need it.

    :param url: the URL (any scheme this transport serves).
    :param config: the core configuration (its section holds this transport's options).
    """

    #: Role -> its class, or ``"module:Class"`` imported on first use.
    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {}
    #: The client library's exceptions meaning "the server cannot be reached".
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, url: str, config: Config) -> None:
        #: The URL this transport was built for.
        self.url = url
        #: The configuration it was built with.
        self.config = config
        self._guard = threading.RLock()
        self._connection: Any = None
        self._opened = False
        self._holders: set[int] = set()
        self._key: tuple[Any, ...] | None = None

    # -- identity -------------------------------------------------------------------------------

    @classmethod
    def normalize_url(cls, url: str) -> str:
        """The form of ``url`` under which transports are shared (the scheme in lower case by
        default; override to make equivalent spellings equal, e.g. a default port)."""
        scheme, sep, rest = url.partition("://")
        return f"{scheme.lower()}{sep}{rest}"

    @classmethod
    def shared(cls: type[TransportT], url: str, config: Config) -> TransportT:
        """The process's transport of this class for ``url`` and ``config`` (built on first use;
        equal configurations share it)."""
        key = (cls, cls.normalize_url(url), config_key(config))
        with _cache_lock:
            found = _cache.get(key)
            if found is not None:
                return cast(TransportT, found)
        made = cls(url, config)  # outside the lock: parsing may raise ConfigError
        with _cache_lock:
            found = _cache.setdefault(key, made)
        found._key = key
        return cast(TransportT, found)

    @classmethod
    def attach(
        cls: type[TransportT], role: object, url: str, config: Config, transport: TransportT | None = None
    ) -> TransportT:
        """For a role's constructor: ``transport`` (or the shared one for ``url`` and
        ``config``), holding it open for ``role`` until :meth:`release`."""
        found = transport if transport is not None else cls.shared(url, config)
        found.retain(role)
        return found

    # -- the count of roles holding it ------------------------------------------------------------

    def retain(self, role: object) -> None:
        """Hold the transport for ``role`` (idempotent per role)."""
        with self._guard:
            self._holders.add(id(role))
            key = self._key
        if key is not None:
            with _cache_lock:
                _cache.setdefault(key, self)

    def release(self, role: object) -> None:
        """``role`` closed; the connection closes when the last holder released (idempotent)."""
        with self._guard:
            if id(role) not in self._holders:
                return
            self._holders.discard(id(role))
            if self._holders:
                return
            connection, opened = self._connection, self._opened
            self._connection, self._opened = None, False
        if self._key is not None:
            with _cache_lock:
                if _cache.get(self._key) is self:
                    del _cache[self._key]
        if opened:
            self.close_connection(connection)

    @property
    def holders(self) -> int:
        """How many roles hold this transport."""
        return len(self._holders)

    # -- the connection -------------------------------------------------------------------------

    @property
    def connection(self) -> Any:
        """The connection (opened by :meth:`open` on first use, thread-safe)."""
        if self._opened:
            return self._connection
        with self._guard:
            if not self._opened:
                self._connection = self.open()
                self._opened = True
            return self._connection

    def connection_for(self, role: object) -> Any:
        """:attr:`connection`, for ``role``: a role used again after its ``close()`` holds the
        transport again (so the connection it reopens is closed with the last role, as ever)."""
        if id(role) not in self._holders:
            self.retain(role)
        return self.connection

    @property
    def is_open(self) -> bool:
        """True once :attr:`connection` was opened (and until the last role closes)."""
        return self._opened

    def open(self) -> Any:
        """Open the connection the roles share (default: none). Called once, lazily."""
        return None

    def close_connection(self, connection: Any) -> None:
        """Close what :meth:`open` returned (called when the last role is closed)."""

    # -- roles ----------------------------------------------------------------------------------

    @classmethod
    def role_class(cls, role: str) -> type[Any]:
        """The class serving ``role`` (imported on first use).

        :raises PluginLoadError: this transport serves no such role, or its class cannot be imported.
        """
        target = cls.role_classes.get(role)
        if target is None:
            raise PluginLoadError(cls.__name__, cls.__module__, f"serves no {role}")
        if isinstance(target, str):
            target = _import(target, cls.__name__, cls.__module__)
        return cast("type[Any]", target)

    def _make(self, role: str) -> Any:
        return self.role_class(role)(self.url, self.config, transport=self)

    def broker(self) -> Broker:
        """A new broker on this transport (closing it releases its share)."""
        return cast("Broker", self._make("broker"))

    def backend(self) -> Backend:
        """A new result backend on this transport."""
        return cast("Backend", self._make("backend"))

    def lock(self) -> Lock:
        """A new lock on this transport."""
        return cast("Lock", self._make("lock"))

    # -- capabilities -----------------------------------------------------------------------------

    def supports_publish_with_state(self, broker: Broker, backend: Backend) -> bool:
        """True when :meth:`publish_with_state` can serve this broker and backend (both handed
        out by this transport); asked once per producer, on its first send."""
        return False

    def publish_with_state(self, broker: Broker, backend: Backend, body: bytes, signature: Signature) -> None:
        """Store ``signature``'s PENDING state in ``backend`` and publish ``body`` through
        ``broker`` in one round trip; PENDING must be stored before any worker can take the
        message.

        :raises BackendError: PENDING was refused.
        :raises PublishError: the message was refused.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot publish with the state")

    def __repr__(self) -> str:  # the scheme only: the URL may hold credentials
        return f"<{type(self).__name__} {self.url.partition(':')[0]}:// holders={len(self._holders)}>"
