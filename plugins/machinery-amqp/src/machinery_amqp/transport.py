"""The AMQP transport: options, URL parsing (once, for the broker and backend of a URL) and
connection set-up.

pika's blocking connections belong to one thread, so the transport opens no connection to share:
the broker keeps its publisher and consumers, the backend its pool of sessions, each made from
:meth:`AMQPTransport.params_for`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pika
import pika.exceptions as pex

from machinery.plugin import ConfigError, Transport, parse_options, redact_url
from machinery_amqp import ENV_OPTIONS

if TYPE_CHECKING:
    from machinery.plugin import Config

__all__ = ["CONNECTION_ERRORS", "ENV_OPTIONS", "AMQPOptions", "AMQPTransport", "connect", "parse_amqp_urls"]

log = logging.getLogger("machinery.amqp")


_EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")

#: pika errors that mean "the connection is gone or could not be made".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pex.AMQPConnectionError,
    pex.ConnectionClosed,
    pex.StreamLostError,
    pex.ConnectionWrongStateError,
    pex.ChannelWrongStateError,
    OSError,
)


def _table(key: str, value: Any) -> dict[str, Any]:
    """A queue argument table from YAML (a mapping) or an env string (Go's ``k:v,k:v`` form)."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        raise ConfigError(f"amqp.{key}", f"expected a mapping or 'k:v,k:v', got {value!r}")
    out: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        k, sep, v = pair.partition(":")
        if not sep or not k:
            raise ConfigError(f"amqp.{key}", f"invalid map item {pair!r} (expected key:value)")
        v = v.strip()
        # RabbitMQ wants numbers for x-max-priority, x-message-ttl... (Go's envconfig passes text).
        out[k.strip()] = int(v) if v.lstrip("-").isdigit() else v
    return out


@dataclass(frozen=True)
class AMQPOptions:
    """The ``amqp:`` config section (Go's ``AMQPConfig`` keys plus this plugin's own).

    :param exchange: exchange name (Go default ``machinery_exchange``).
    :param exchange_type: ``direct``, ``fanout``, ``topic`` or ``headers``.
    :param binding_key: key the default queue is bound with; also the default routing key for
        a direct exchange (Go default ``machinery_task``).
    :param prefetch_count: unacknowledged messages per consumer; 0 = 4 x the worker's concurrency (``QOS_MULTIPLIER``).
    :param queue_declare_args: extra task-queue arguments (``x-max-priority``, ``x-queue-type``...).
    :param queue_binding_args: binding arguments (headers exchanges).
    :param auto_delete: Go's ``AutoDelete``: declare delay queues auto-delete.
    :param delayed_queue: Go v2's single delay queue with per-message expiration ("" = a queue
        per delay, Go v1's scheme).
    :param max_priority: adds ``x-max-priority`` to task queues (0 = no priorities).
    :param queue_type: ``classic`` or ``quorum`` (adds ``x-queue-type: quorum``).
    :param heartbeat: AMQP heartbeat in seconds (a ``?heartbeat=`` in the URL wins).
    :param connect_timeout: seconds to wait for a TCP connection and the AMQP handshake.
    :param confirm_timeout: seconds ``publish`` waits for the broker's confirm.
    :param reconnect_max_delay: cap of the reconnect back-off, in seconds.
    """

    exchange: str = "machinery_exchange"
    exchange_type: str = "direct"
    binding_key: str = "machinery_task"
    prefetch_count: int = 0
    queue_declare_args: dict[str, Any] | str = field(default_factory=dict)
    queue_binding_args: dict[str, Any] | str = field(default_factory=dict)
    auto_delete: bool = False
    delayed_queue: str = ""
    max_priority: int = 0
    queue_type: str = "classic"
    heartbeat: int = 60
    connect_timeout: float = 10.0
    confirm_timeout: float = 30.0
    reconnect_max_delay: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "queue_declare_args", _table("queue_declare_args", self.queue_declare_args))
        object.__setattr__(self, "queue_binding_args", _table("queue_binding_args", self.queue_binding_args))
        if self.exchange_type not in _EXCHANGE_TYPES and not self.exchange_type.startswith("x-"):
            kinds = ", ".join(_EXCHANGE_TYPES)
            raise ConfigError("amqp.exchange_type", f"{self.exchange_type!r} is not one of {kinds}")
        if self.prefetch_count < 0:
            raise ConfigError("amqp.prefetch_count", "must be >= 0")
        if not 0 <= self.max_priority <= 255:
            raise ConfigError("amqp.max_priority", "must be in [0, 255]")
        if self.queue_type not in ("classic", "quorum"):
            raise ConfigError("amqp.queue_type", f"expected 'classic' or 'quorum', got {self.queue_type!r}")
        if self.queue_type == "quorum" and self.task_queue_args.get("x-max-priority"):
            raise ConfigError("amqp.max_priority", "quorum queues do not support priorities (RabbitMQ < 4.0)")
        for name in ("heartbeat", "connect_timeout", "confirm_timeout", "reconnect_max_delay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"amqp.{name}", "must be >= 0")

    @classmethod
    def from_config(cls, config: Config) -> AMQPOptions:
        """Parse ``config``'s ``amqp`` section (unknown keys and bad values are errors)."""
        return parse_options(cls, "amqp", config.section("amqp"))

    @property
    def is_direct(self) -> bool:
        """True for a direct exchange (Go's ``isDirectExchange``)."""
        return self.exchange_type == "direct"

    @property
    def task_queue_args(self) -> dict[str, Any]:
        """Arguments every task queue is declared with."""
        args: dict[str, Any] = dict(self.queue_declare_args)  # type: ignore[arg-type]
        if self.max_priority:
            args["x-max-priority"] = self.max_priority
        if self.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
        return args


def parse_amqp_urls(url: str, config: Config, options: AMQPOptions, role: str) -> list[pika.URLParameters]:
    """Connection parameters for each URL (several when Go's multiple-broker separator is set).

    :raises ConfigError: a URL is not ``amqp://`` or ``amqps://`` or cannot be parsed.
    """
    sep = config.multiple_broker_separator
    urls = [u.strip() for u in (url.split(sep) if sep else [url]) if u.strip()]
    if not urls:
        raise ConfigError("broker", "no AMQP URL given")
    out = []
    for u in urls:
        scheme = u.partition("://")[0].lower()
        if scheme not in ("amqp", "amqps"):
            raise ConfigError("broker", f"not an AMQP URL (amqp:// or amqps://): {redact_url(u)!r}")
        try:
            params = pika.URLParameters(u)
        except Exception as exc:  # noqa: BLE001 - pika raises ValueError/TypeError/AMQPError subclasses
            raise ConfigError("broker", f"invalid AMQP URL {redact_url(u)!r}: {exc}") from None
        if "heartbeat" not in u.partition("?")[2]:
            params.heartbeat = options.heartbeat
        if "socket_timeout" not in u.partition("?")[2]:
            params.socket_timeout = options.connect_timeout
        params.blocked_connection_timeout = options.confirm_timeout or None
        params.connection_attempts = 1
        params.client_properties = {"connection_name": f"machinery-amqp {role} pid={os.getpid()}"}
        out.append(params)
    return out


def connect(params: list[pika.URLParameters]) -> pika.BlockingConnection:
    """A blocking connection to the first URL that answers (Go's failover order).

    :raises pika.exceptions.AMQPConnectionError: none answered (the last error is raised).
    """
    last: BaseException | None = None
    for p in params:
        try:
            return pika.BlockingConnection(p)
        except pex.ProbableAuthenticationError:
            raise
        except CONNECTION_ERRORS as exc:
            log.debug("cannot connect to %s:%s: %r", p.host, p.port, exc)
            last = exc
    assert last is not None
    raise last


def describe(params: list[pika.URLParameters]) -> str:
    """``host:port/vhost`` of each URL, without credentials, for error messages."""
    return ", ".join(f"{p.host}:{p.port}/{p.virtual_host}" for p in params)


class AMQPTransport(Transport):
    """An AMQP URL (or several, with Go's ``multiple_broker_separator``) and the ``amqp:``
    section, parsed once for the broker and backend handed out.

    :param url: ``amqp://`` or ``amqps://``.
    :param config: the core config.
    :raises machinery.errors.ConfigError: a bad URL or option.
    """

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {
        "broker": "machinery_amqp.broker:AMQPBroker",
        "backend": "machinery_amqp.backend:AMQPBackend",
    }
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = CONNECTION_ERRORS

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        #: The ``amqp:`` section.
        self.options = AMQPOptions.from_config(config)
        self._params = parse_amqp_urls(url, config, self.options, "broker")

    def params_for(self, role: str) -> list[pika.URLParameters]:
        """Connection parameters for each URL, naming ``role`` in the connection's name."""
        out = []
        for p in self._params:
            mine = copy.copy(p)
            mine.client_properties = {"connection_name": f"machinery-amqp {role} pid={os.getpid()}"}
            out.append(mine)
        return out
