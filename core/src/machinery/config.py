"""Typed configuration, from keyword arguments, environment variables or Go Machinery's YAML.

The core :class:`Config` holds only core fields. Transport sections such as ``redis:`` or
``amqp:`` are kept, as mappings, in :attr:`Config.transport_options`; the plugin that owns a
section parses it into its own typed options with :func:`parse_options`, which reports unknown
keys and bad values by name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from machinery.errors import ConfigError
from machinery.settings import parse_cpu_affinity, parse_memory

# Defined with the stored states they apply to (so the backend contract needs no config import);
# re-exported here, where users look for them.
from machinery.state import DEFAULT_RESULTS_EXPIRE_IN, KEEP_RESULTS_FOREVER, results_lifetime

if TYPE_CHECKING:
    import re
    from typing import TypeVar

    T = TypeVar("T")

__all__ = [
    "DEFAULT_RESULTS_EXPIRE_IN",
    "KEEP_RESULTS_FOREVER",
    "Config",
    "parse_options",
    "redact_url",
    "results_lifetime",
]


#: Go Machinery's config sections: ignored where their plugin is not installed (other unknown keys are errors).
GO_SECTIONS = frozenset({"amqp", "redis", "sqs", "gcp_pubsub", "mongodb", "dynamodb", "tls"})

_CORE_ENV = {
    "BROKER": "broker",
    "DEFAULT_QUEUE": "default_queue",
    "RESULT_BACKEND": "result_backend",
    "RESULTS_EXPIRE_IN": "results_expire_in",
    "LOCK": "lock",
    "MULTIPLE_BROKER_SEPARATOR": "multiple_broker_separator",
    "NO_UNIX_SIGNALS": "no_unix_signals",
    "MACHINERY_TIMEZONE": "timezone",
    "MACHINERY_EAGER": "eager",
    # worker pools and time limits (Python only; docs/pools.md)
    "MACHINERY_WORKER_POOL": "worker_pool",
    "MACHINERY_WORKER_PREFETCH": "worker_prefetch",
    "MACHINERY_WORKER_CPU_AFFINITY": "worker_cpu_affinity",
    "MACHINERY_TIME_LIMIT": "time_limit",
    "MACHINERY_SOFT_TIME_LIMIT": "soft_time_limit",
    "MACHINERY_MAX_ABANDONED_THREADS": "max_abandoned_threads",
    "MACHINERY_MAX_TASKS_PER_CHILD": "max_tasks_per_child",
    "MACHINERY_MAX_MEMORY_PER_CHILD": "max_memory_per_child",
    "MACHINERY_MAX_CRASHES": "max_crashes",
}

#: Worker pool settings: name -> type (Python only; Go Machinery has none of them).
_POOL_FIELDS: dict[str, type] = {
    "time_limit": float,
    "soft_time_limit": float,
    "max_abandoned_threads": int,
    "max_tasks_per_child": int,
    "max_crashes": int,
    "worker_prefetch": int,
}


@dataclass(frozen=True)
class Config:
    """Core configuration.

    :param broker: broker URL; empty means the embedded default (``sqlite:///machinery.db``).
    :param result_backend: result backend URL; empty means the broker's URL when its scheme
        also serves results, else the embedded default.
    :param lock: lock URL for periodic tasks; empty means the backend's (or broker's) URL.
    :param default_queue: the queue tasks go to when they name none.
    :param results_expire_in: seconds results are kept; 0 means Go's default 3600 (as in Go),
        -1 keeps them forever (Python only: Go has no such setting).
    :param multiple_broker_separator: splits several broker URLs for failover (Go's setting).
    :param no_unix_signals: do not install SIGINT/SIGTERM handlers in workers.
    :param timezone: time zone of periodic schedules (IANA name), UTC by default.
    :param worker_pool: ``threads`` (default) or ``processes`` (Python only, docs/pools.md).
    :param worker_prefetch: messages a worker takes beyond its concurrency while tasks are quick
        (docs/worker.md; 0: none; None: the broker's ``default_read_ahead``, 1 but on sqlite).
    :param worker_cpu_affinity: keep the worker's threads on one CPU: ``auto``, a CPU list such
        as ``0`` or ``2-3``, or ``""`` for none (the default; :mod:`machinery.affinity`).
    :param time_limit: workers' default hard time limit per task in seconds, 0 for none.
    :param soft_time_limit: workers' default soft time limit in seconds, 0 for none.
    :param max_abandoned_threads: threads pool: past this many threads abandoned by the hard
        limit and still running, the worker stops and exits with status 75 (0: the concurrency).
    :param max_tasks_per_child: processes pool: replace a child after this many tasks (0: never).
    :param max_memory_per_child: processes pool: replace a child whose resident memory passed
        this many KiB after a task (or ``200MB``, ``1G``; 0: never).
    :param max_crashes: processes pool: deaths of a child running the task after which the task
        is stored as FAILURE instead of being delivered again.
    :param transport_options: plugin-owned sections, e.g. ``{"redis": {"max_active": 10}}``.
    :param eager: run sent tasks at once in the caller (:mod:`machinery.eager`; the broker
        becomes ``eager://``, and so does the backend unless ``result_backend`` is set).
    """

    broker: str = ""
    result_backend: str = ""
    lock: str = ""
    default_queue: str = "machinery_tasks"
    results_expire_in: int = 3600
    multiple_broker_separator: str = ""
    no_unix_signals: bool = False
    timezone: str = "UTC"
    worker_pool: str = "threads"
    time_limit: float = 0.0
    soft_time_limit: float = 0.0
    max_abandoned_threads: int = 0
    max_tasks_per_child: int = 0
    max_memory_per_child: int = 0
    max_crashes: int = 3
    worker_prefetch: int | None = None
    worker_cpu_affinity: str = ""
    transport_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    eager: bool = False

    def __post_init__(self) -> None:
        for name in ("broker", "result_backend", "lock", "default_queue", "multiple_broker_separator", "timezone"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise ConfigError(name, f"expected a string, got {type(v).__name__}")
        if not self.default_queue:
            raise ConfigError("default_queue", "must not be empty")
        rei = self.results_expire_in
        if isinstance(rei, str):
            object.__setattr__(self, "results_expire_in", _coerce("results_expire_in", rei, int))
        elif type(rei) is not int:
            raise ConfigError("results_expire_in", f"expected whole seconds, got {rei!r}")
        if self.results_expire_in < KEEP_RESULTS_FOREVER:
            raise ConfigError("results_expire_in", "must be >= 0 (0 = Go's default 3600), or -1 to keep forever")
        if isinstance(self.no_unix_signals, str):
            object.__setattr__(self, "no_unix_signals", _coerce("no_unix_signals", self.no_unix_signals, bool))
        if isinstance(self.eager, str):
            object.__setattr__(self, "eager", _coerce("eager", self.eager, bool))
        elif type(self.eager) is not bool:
            raise ConfigError("eager", f"expected true or false, got {self.eager!r}")
        for url_key in ("broker", "result_backend", "lock"):
            url = getattr(self, url_key)
            if url and "://" not in url:
                raise ConfigError(url_key, f"not a URL (expected scheme://...): {redact_url(url)!r}")
        for name, typ in _POOL_FIELDS.items():
            if name == "worker_prefetch" and self.worker_prefetch is None:
                continue  # the broker's default (Broker.default_read_ahead)
            v = _coerce(name, getattr(self, name), typ)
            if v < 0:
                raise ConfigError(name, f"must be >= 0, got {v!r}")
            object.__setattr__(self, name, v)
        try:
            object.__setattr__(self, "max_memory_per_child", parse_memory(self.max_memory_per_child))
        except ValueError as exc:
            raise ConfigError("max_memory_per_child", str(exc)) from None
        try:
            object.__setattr__(self, "worker_cpu_affinity", parse_cpu_affinity(self.worker_cpu_affinity))
        except ValueError as exc:
            raise ConfigError("worker_cpu_affinity", str(exc)) from None
        if self.worker_pool not in ("threads", "processes"):
            raise ConfigError("worker_pool", f"expected threads or processes, got {self.worker_pool!r}")
        if not isinstance(self.transport_options, Mapping):
            raise ConfigError("transport_options", "expected a mapping of sections")
        for section, opts in self.transport_options.items():
            if not isinstance(opts, Mapping):
                raise ConfigError(section, "expected a mapping of options")

    # -- derived ------------------------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        """The broker URL in effect (``eager://`` in eager mode, the embedded default when
        none is set)."""
        if self.eager:
            return "eager://"
        return self.broker or default_url()

    def section(self, name: str) -> Mapping[str, Any]:
        """The options of one plugin-owned section (empty when absent)."""
        return self.transport_options.get(name, {})

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """The config as a dict with credentials removed from every URL, for logs and display."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("broker", "result_backend", "lock"):
                v = redact_url(v)
            elif f.name == "transport_options":
                v = {s: _redact_option(s, o) for s, o in v.items()}
            out[f.name] = v
        return out

    def __repr__(self) -> str:
        # Credentials never show: anything that logs a config (``%r``, f-strings, tracebacks
        # with locals) would leak them. The fields themselves keep the real values.
        fields = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Config({fields})"

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, known_sections: set[str] | None = None) -> Config:
        """Build from a mapping with Go Machinery's keys (as in its YAML files).

        Scalar keys must be core fields; mapping values are plugin sections. A section is
        accepted when ``known_sections`` (default: sections owned by installed plugins, plus
        Go's own section names) contains it; any other key is a :class:`ConfigError`.
        """
        core = {f.name for f in dataclasses.fields(cls)} - {"transport_options"}
        kwargs: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        if known_sections is None:
            known_sections = _plugin_sections() | set(GO_SECTIONS)
        for key, value in data.items():
            if not isinstance(key, str):
                raise ConfigError(str(key), "keys must be strings")
            if key in core:
                kwargs[key] = value
            elif key == "transport_options" and isinstance(value, Mapping):
                for s, o in value.items():
                    sections[s] = dict(o)
            elif isinstance(value, Mapping) and key in known_sections:
                sections[key] = dict(value)
            elif isinstance(value, Mapping):
                raise ConfigError(key, "unknown section (no installed plugin owns it)")
            elif value is None and key in known_sections:
                continue
            else:
                raise ConfigError(key, f"unknown key; known keys: {', '.join(sorted(core))}")
        return cls(**kwargs, transport_options=sections)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, base: Config | None = None) -> Config:
        """Build from environment variables with Go Machinery's names.

        ``BROKER``, ``DEFAULT_QUEUE``, ``RESULT_BACKEND``, ``RESULTS_EXPIRE_IN``, ``LOCK``,
        ``MULTIPLE_BROKER_SEPARATOR``, ``NO_UNIX_SIGNALS`` and ``MACHINERY_TIMEZONE``, plus the
        variables each installed transport declares in ``env_options`` (``AMQP_EXCHANGE``,
        ``REDIS_MAX_IDLE``...). Values from ``env`` override ``base``.
        """
        env = os.environ if env is None else env
        changes: dict[str, Any] = {}
        for var, key in _CORE_ENV.items():
            if var in env and env[var] != "":
                changes[key] = env[var]
        base = base or cls()
        sections = {s: dict(o) for s, o in base.transport_options.items()}
        for var, (section, key) in _plugin_env_options().items():
            if var in env:
                sections.setdefault(section, {})[key] = env[var]
        return dataclasses.replace(base, **changes, transport_options=sections)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Config:
        """Build from a YAML file with Go Machinery's keys (needs ``machinery-core[yaml]``)."""
        try:
            import yaml
        except ImportError:
            raise ConfigError(str(path), "reading YAML needs PyYAML: pip install 'machinery-core[yaml]'") from None
        from pathlib import Path

        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read config file: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"invalid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(str(path), "the file must hold a mapping of keys")
        return cls.from_mapping(data)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Config:
        """YAML file (optional) < environment < keyword overrides."""
        base = cls.from_yaml(path) if path else cls()
        cfg = cls.from_env(env, base)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(cfg, **overrides) if overrides else cfg


def default_url() -> str:
    """The embedded default transport URL: ``MACHINERY_DEFAULT_URL`` or ``sqlite:///machinery.db``."""
    return os.environ.get("MACHINERY_DEFAULT_URL") or "sqlite:///machinery.db"


def _plugin_sections() -> set[str]:
    from machinery.plugins import get_plugin_host

    try:
        return get_plugin_host().config_sections()
    except Exception:  # noqa: BLE001 - a broken plugin must not hide config errors
        return set()


def _plugin_env_options() -> dict[str, tuple[str, str]]:
    from machinery.plugins import get_plugin_host

    try:
        return get_plugin_host().env_options()
    except Exception:  # noqa: BLE001 - a broken plugin must not hide config errors
        return {}


# -- redaction --------------------------------------------------------------------------------

# The user information runs to the *last* '@' before the path, as URL parsers read it, so that
# an '@' in a password (not percent-encoded) does not leave the rest of it shown.
_USERINFO_RE = r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/?#\s]*)@"
# A query-string parameter whose name holds one of these words, anywhere (aws_secret_access_key,
# X-Amz-Signature, X-Amz-Credential, auth_token...).
_SECRET_QUERY_RE = (
    r"(?i)([?&;][^=&;#\s]*?(?:password|passwd|pwd|pass|secret|token|key|signature|sig|credential)[^=&;#\s]*=)"
    r"[^&;#\s]*"
)
_redaction: tuple[re.Pattern[str], re.Pattern[str]] | None = None


def _redaction_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    # Compiled on first use rather than at import (most imports never redact anything).
    global _redaction
    if _redaction is None:
        import re

        _redaction = (re.compile(_USERINFO_RE), re.compile(_SECRET_QUERY_RE))
    return _redaction


def _secret_key(key: str) -> bool:
    k = key.lower()
    return any(
        s in k for s in ("password", "passwd", "secret", "token", "credential", "access_key", "private_key", "auth")
    )


def redact_url(url: str) -> str:
    """``url`` with credentials replaced by ``***`` (user names kept), for logs and displays.

    Works on several URLs joined by commas or a separator, and on query-string secrets.
    """
    if not url:
        return url
    userinfo, secret_query = _redaction_patterns()

    def _sub(m: re.Match[str]) -> str:
        user = m.group("user")
        if ":" in user:
            name = user.split(":", 1)[0]
            return f"{m.group('scheme')}{name}:***@"
        return f"{m.group('scheme')}***@"

    out = userinfo.sub(_sub, url)
    return secret_query.sub(r"\1***", out)


def _redact_option(key: str, value: Any) -> Any:
    """An option's value fit for display: ``***`` for a secret key's, URLs redacted, nested
    mappings and lists redacted the same way."""
    if _secret_key(key) and value is not None and not isinstance(value, Mapping):
        return "***"
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {k: _redact_option(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_option(key, v) for v in value)
    return value


# -- plugin option parsing ----------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    import types
    import typing

    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for a in args:
            try:
                return _coerce(key, value, a)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise ConfigError(key, "; ".join(errors))
    if typ is Any:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(key, f"expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(key, f"expected a string, got {value!r}")
    if origin in (dict, Mapping) or typ in (dict, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise ConfigError(key, f"expected a mapping, got {value!r}")
    if origin in (list, tuple) or typ in (list, tuple):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(key, f"expected a list, got {value!r}")
    return value


def parse_options(cls: type[T], section: str, *sources: Mapping[str, Any]) -> T:
    """Parse plugin options into the dataclass ``cls``, later sources overriding earlier ones.

    Strings (from environment variables or URL query strings) are converted to the field's
    type. Unknown keys and bad values raise :class:`ConfigError` naming ``section.key``.

    :param cls: a dataclass whose fields all have defaults.
    :param section: the section name, for error messages (``redis``).
    :param sources: mappings of options (YAML section, URL query, keyword arguments).
    """
    import typing

    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    merged: dict[str, Any] = {}
    for src in sources:
        for key, value in src.items():
            k = key.lower().replace("-", "_")
            if k not in names:
                raise ConfigError(f"{section}.{key}", f"unknown option; known options: {', '.join(sorted(names))}")
            merged[k] = _coerce(f"{section}.{key}", value, hints.get(k, Any))
    try:
        return cls(**merged)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(section, str(exc)) from None
