"""The Redis transport: URL parsing, options (parsed once), the connection pool and command
batcher the broker, backend and lock of one URL share, and error translation.

URL forms (those Go Machinery accepts, plus ``user:password`` for Redis ACLs):

- ``redis://[password@]host[:port][/db]`` and ``redis://user:password@host[:port][/db]``
- ``rediss://...``: the same over TLS
- ``redis+socket://[password@]/path/to/redis.sock[:db]`` (Go's ``:/db`` spelling works too)
- ``redis://[password@]host1:port1,host2:port2,...``: several hosts are a Redis Cluster
  (or, with ``master_name`` set, the Sentinels of that master), as in Go's ``NewGR``

A query string sets options (``redis://h/0?visibility_timeout=30``); they override the YAML
``redis:`` section. The core keeps one :class:`RedisTransport` per URL and configuration: a
broker, backend and lock built from them share its pool, closed with the last of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import astuple, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from machinery.plugin import (
    BackendError,
    ConfigError,
    MachineryError,
    PublishError,
    Transport,
    parse_options,
    redact_url,
)
from machinery_redis import ENV_OPTIONS
from machinery_redis.batch import CommandBatcher

if TYPE_CHECKING:
    from machinery.plugin import Backend, Broker, Config, Signature

__all__ = [
    "ENV_OPTIONS",
    "RedisConnection",
    "RedisOptions",
    "RedisTarget",
    "RedisTransport",
    "parse_url",
    "translate_errors",
]

SCHEMES = ("redis", "rediss", "redis+socket")
DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisOptions:
    """The ``redis:`` config section (Go Machinery's keys first, then this plugin's own).

    :param max_idle: Go's idle-connection cap; accepted for config compatibility (redis-py
        keeps released connections up to ``max_active``).
    :param max_active: pool size: most connections open at once per process (0 = no limit).
    :param idle_timeout: seconds a pooled connection may sit idle before it is checked with a
        PING (and silently reopened) on its next use (0 = never checked). Go's YAML key
        ``max_idle_timeout`` is accepted as an alias.
    :param max_idle_timeout: alias of ``idle_timeout`` (Go's YAML spelling).
    :param wait: when the pool is at ``max_active``, wait for a free connection (up to
        ``connect_timeout``) instead of failing at once.
    :param read_timeout: socket read timeout in seconds.
    :param write_timeout: socket write timeout in seconds (redis-py has one socket timeout:
        the larger of the two is used).
    :param connect_timeout: connect timeout in seconds.
    :param normal_tasks_poll_period: milliseconds a consumer blocks in ``BLMOVE`` per call
        (capped at 1000 so that a stopping worker notices within a second).
    :param delayed_tasks_poll_period: milliseconds between looks at the delayed-task set when
        nothing is due sooner.
    :param delayed_tasks_key: the sorted set of delayed tasks (Go's default ``delayed_tasks``).
    :param client_name: ``CLIENT SETNAME`` for every connection.
    :param master_name: Sentinel master name: the URL's hosts are then Sentinels.
    :param sentinel_password: password of the Sentinels (if different from the master's).
    :param cluster_enabled: use Redis Cluster even with a single host.
    :param visibility_timeout: seconds a consumer's heartbeat lives; when a consumer dies
        (kill -9), its unacknowledged tasks go back to the queue this long after its last
        heartbeat. Long-running tasks are not affected: the heartbeat is renewed every third of it.
    :param retries: retries of a command after a connection error (exponential back-off,
        capped at ``retry_backoff_cap``); publishing fails with a clear error after that.
    :param retry_backoff_cap: the longest pause between retries, in seconds.
    :param dead_letter_limit: messages kept in a queue's dead-letter list ``{queue}:dead``
        (oldest dropped first; 0 drops rejected messages instead of keeping them).
    :param ssl_cert_reqs: ``rediss://`` certificate check: ``required``, ``optional`` or ``none``.
    :param ssl_ca_certs: CA bundle file for ``rediss://``.
    :param ssl_certfile: client certificate file for ``rediss://``.
    :param ssl_keyfile: client key file for ``rediss://``.
    :param ssl_check_hostname: check the server's host name against its certificate.
    :param track_states: wait for results with Redis client tracking (pushed changes, two
        extra connections per waiting process) instead of polling; needs Redis >= 6.
    """

    max_idle: int = 3
    max_active: int = 0
    idle_timeout: int = 240
    max_idle_timeout: int | None = None
    wait: bool = False
    read_timeout: float = 15.0
    write_timeout: float = 15.0
    connect_timeout: float = 15.0
    normal_tasks_poll_period: int = 1000
    delayed_tasks_poll_period: int = 20
    delayed_tasks_key: str = "delayed_tasks"
    client_name: str = ""
    master_name: str = ""
    sentinel_password: str = field(default="", repr=False)
    cluster_enabled: bool = False
    visibility_timeout: float = 15.0
    retries: int = 3
    retry_backoff_cap: float = 1.0
    dead_letter_limit: int = 10000
    ssl_cert_reqs: str = "required"
    ssl_ca_certs: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_check_hostname: bool = True
    track_states: bool = True

    section: ClassVar[str] = "redis"

    def __post_init__(self) -> None:
        if self.max_idle_timeout is not None:
            object.__setattr__(self, "idle_timeout", self.max_idle_timeout)
        checks = {
            "max_idle": self.max_idle >= 0,
            "max_active": self.max_active >= 0,
            "idle_timeout": self.idle_timeout >= 0,
            "read_timeout": self.read_timeout > 0,
            "write_timeout": self.write_timeout > 0,
            "connect_timeout": self.connect_timeout > 0,
            "normal_tasks_poll_period": self.normal_tasks_poll_period >= 0,
            "delayed_tasks_poll_period": self.delayed_tasks_poll_period >= 0,
            "visibility_timeout": self.visibility_timeout >= 1,
            "retries": self.retries >= 0,
            "retry_backoff_cap": self.retry_backoff_cap >= 0,
            "dead_letter_limit": self.dead_letter_limit >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                limit = ">= 1" if key == "visibility_timeout" else ("> 0" if "timeout" in key else ">= 0")
                raise ConfigError(f"redis.{key}", f"must be {limit}, got {getattr(self, key)!r}")
        if not self.delayed_tasks_key:
            raise ConfigError("redis.delayed_tasks_key", "must not be empty")
        if self.ssl_cert_reqs not in ("required", "optional", "none"):
            raise ConfigError("redis.ssl_cert_reqs", f"expected required, optional or none, got {self.ssl_cert_reqs!r}")

    @property
    def block_timeout(self) -> float:
        """Seconds one ``BLMOVE`` blocks: the poll period, at most 1 s and below the read timeout."""
        period = self.normal_tasks_poll_period / 1000 if self.normal_tasks_poll_period > 0 else 1.0
        return max(0.01, min(period, 1.0, self.read_timeout / 2))

    @property
    def delayed_poll(self) -> float:
        """Seconds between looks at the delayed set when nothing is known to be due sooner."""
        return max(0.001, self.delayed_tasks_poll_period / 1000) if self.delayed_tasks_poll_period else 0.02


@dataclass(frozen=True)
class RedisTarget:
    """Where to connect, parsed from a URL.

    :param scheme: ``redis``, ``rediss`` or ``redis+socket``.
    :param hosts: ``(host, port)`` pairs (one for a single server, several for a cluster).
    :param socket_path: the Unix socket path (``redis+socket://`` only).
    :param db: the database number.
    :param username: the ACL user name, if any.
    :param password: the password, if any.
    :param query: options from the query string.
    """

    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()
    socket_path: str = ""
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    query: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold sentinel_password

    @property
    def tls(self) -> bool:
        """True for ``rediss://``."""
        return self.scheme == "rediss"


def _bad(url: str, reason: str) -> ConfigError:
    return ConfigError("url", f"{redact_url(url)!r}: {reason}")


def _parse_host(url: str, text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad(url, f"bad host {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _bad(url, f"missing host in {text!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(url, f"bad port {port_text!r}")
    return host, int(port_text)


def _parse_db(url: str, text: str) -> int:
    if text == "":
        return 0
    if not text.isdigit():
        raise _bad(url, f"the database must be a number, got {text!r}")
    return int(text)


def _userinfo(url: str, text: str) -> tuple[str | None, str | None]:
    # Go: "redis://pwd@host" is a password; "user:pwd@" adds an ACL user name.
    if not text:
        return None, None
    if ":" in text:
        user, _, pwd = text.partition(":")
        return (unquote(user) or None), unquote(pwd)
    return None, unquote(text)


def parse_url(url: str) -> RedisTarget:
    """Parse a ``redis://``, ``rediss://`` or ``redis+socket://`` URL.

    :raises machinery.errors.ConfigError: naming the (redacted) URL and what is wrong.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise _bad(url, f"expected one of {', '.join(s + '://' for s in SCHEMES)}")
    rest, _, query_text = rest.partition("?")
    rest = rest.split("#", 1)[0]
    query = tuple(parse_qsl(query_text, keep_blank_values=True))
    if scheme == "redis+socket":
        pwd: str | None = None
        if not rest.startswith("/"):
            if "@" not in rest:
                raise _bad(url, "expected redis+socket://[password@]/path/to/redis.sock[:db]")
            info, _, rest = rest.partition("@")
            user, pwd = _userinfo(url, info)
        else:
            user = None
        if not rest.startswith("/"):
            raise _bad(url, "the socket path must be absolute (redis+socket://[password@]/path.sock[:db])")
        path, db = rest, 0
        head, colon, tail = rest.rpartition(":")
        if colon and (tail.lstrip("/").isdigit() or tail in ("", "/")):
            path, db = head, _parse_db(url, tail.lstrip("/"))
        return RedisTarget(scheme, socket_path=path, db=db, username=user, password=pwd, query=query)
    netloc, _, path = rest.partition("/")
    info, at, hostlist = netloc.rpartition("@")
    user, pwd = _userinfo(url, info) if at else (None, None)
    if not hostlist:
        raise _bad(url, "missing host")
    hosts = tuple(_parse_host(url, h.strip()) for h in hostlist.split(","))
    db = _parse_db(url, path.strip("/"))
    return RedisTarget(scheme, hosts=hosts, db=db, username=user, password=pwd, query=query)


def load_options(target: RedisTarget, config: Config) -> RedisOptions:
    """Options from the config's ``redis:`` section, overridden by the URL's query string."""
    opts = parse_options(RedisOptions, "redis", config.section("redis"), dict(target.query))
    if len(target.hosts) > 1 and not opts.master_name and target.db:
        raise ConfigError("url", "a Redis Cluster (several hosts) has only database 0")
    return opts


# -- clients -----------------------------------------------------------------------------------


def _conn_kwargs(target: RedisTarget, opts: RedisOptions, retries: int) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_timeout": max(opts.read_timeout, opts.write_timeout),
        "socket_connect_timeout": opts.connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": opts.idle_timeout,
        "retry": Retry(ExponentialBackoff(cap=opts.retry_backoff_cap, base=0.05), retries),
    }
    if opts.client_name:
        kw["client_name"] = opts.client_name
    if target.tls:
        kw.update(
            ssl_cert_reqs=opts.ssl_cert_reqs,
            ssl_ca_certs=opts.ssl_ca_certs or None,
            ssl_certfile=opts.ssl_certfile or None,
            ssl_keyfile=opts.ssl_keyfile or None,
            ssl_check_hostname=opts.ssl_check_hostname,
        )
    return kw


def build_client(target: RedisTarget, opts: RedisOptions, *, retries: int | None = None) -> Any:
    """A new redis-py client (``Redis`` or ``RedisCluster``) with its own pool."""
    retries = opts.retries if retries is None else retries
    kw = _conn_kwargs(target, opts, retries)
    max_conn = opts.max_active or None
    if target.socket_path:
        conn_cls: type[redis.Connection] | type[redis.UnixDomainSocketConnection] = redis.UnixDomainSocketConnection
        kw["path"] = target.socket_path
        kw.pop("socket_keepalive")
        kw.pop("socket_connect_timeout")
        return redis.Redis(connection_pool=_pool(opts, max_conn, connection_class=conn_cls, db=target.db, **kw))
    if opts.master_name:
        from redis.sentinel import Sentinel

        sentinel_kw = {k: v for k, v in kw.items() if k.startswith("socket_")}
        if opts.sentinel_password:
            sentinel_kw["password"] = opts.sentinel_password
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kw, ssl=target.tls, **kw)
        return sentinel.master_for(opts.master_name, db=target.db)
    if len(target.hosts) > 1 or opts.cluster_enabled:
        nodes = [ClusterNode(h, p) for h, p in target.hosts]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, ssl=target.tls, max_connections=max_conn or 2**31, **kw)
    host, port = target.hosts[0]
    conn_cls = redis.SSLConnection if target.tls else redis.Connection
    return redis.Redis(
        connection_pool=_pool(opts, max_conn, connection_class=conn_cls, host=host, port=port, db=target.db, **kw)
    )


def _pool(opts: RedisOptions, max_conn: int | None, **kw: Any) -> redis.ConnectionPool:
    if max_conn and opts.wait:
        return redis.BlockingConnectionPool(max_connections=max_conn, timeout=opts.connect_timeout, **kw)  # type: ignore[no-untyped-call]
    return redis.ConnectionPool(max_connections=max_conn, **kw)


class RedisConnection:
    """What a :class:`RedisTransport` opens: one client (one pool) and its command batcher."""

    def __init__(self, client: Any) -> None:
        #: The redis-py client (``Redis`` or ``RedisCluster``).
        self.client = client
        #: Shares round trips between the threads writing states and acknowledging messages.
        self.batcher = CommandBatcher(client)


class RedisTransport(Transport):
    """One Redis URL and ``redis:`` section: parsed once, one pool for the broker, backend and
    lock handed out (see :class:`machinery.plugin.Transport`).

    :param url: ``redis://``, ``rediss://`` or ``redis+socket://``.
    :param config: the core config; its ``redis`` section and the URL's query string are parsed
        into :attr:`options`.
    :raises machinery.errors.ConfigError: a bad URL or option.
    """

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {
        "broker": "machinery_redis.broker:RedisBroker",
        "backend": "machinery_redis.backend:RedisBackend",
        "lock": "machinery_redis.lock:RedisLock",
    }
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = (redis.ConnectionError, redis.TimeoutError)

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        #: Where to connect.
        self.target = parse_url(url)
        #: The ``redis:`` section and the URL's query string.
        self.options = load_options(self.target, config)

    @classmethod
    def normalize_url(cls, url: str) -> str:
        """Equal for URLs naming the same server, database, credentials and query options."""
        return repr(astuple(parse_url(url)))  # in memory only: it holds the credentials

    def open(self) -> RedisConnection:
        """A new client with its own pool, and its command batcher."""
        return RedisConnection(build_client(self.target, self.options))

    def close_connection(self, connection: RedisConnection) -> None:
        """Send what the batcher still holds (its units report their own errors), close the pool."""
        connection.batcher.close()
        with contextlib.suppress(redis.RedisError, OSError):
            connection.client.close()

    @property
    def client(self) -> Any:
        """The shared redis-py client (the pool opens on first use)."""
        return self.connection.client

    @property
    def batcher(self) -> CommandBatcher:
        """The shared command batcher."""
        batcher: CommandBatcher = self.connection.batcher
        return batcher

    def supports_publish_with_state(self, broker: Broker, backend: Backend) -> bool:
        """A Redis broker and backend of this transport, outside a cluster (where the state and
        the queue may live on different nodes)."""
        from machinery_redis.backend import RedisBackend
        from machinery_redis.broker import RedisBroker

        return isinstance(broker, RedisBroker) and isinstance(backend, RedisBackend) and not is_cluster(self.client)

    def publish_with_state(self, broker: Broker, backend: Backend, body: bytes, signature: Signature) -> None:
        """``SET`` the PENDING state and ``RPUSH`` the message (``ZADD`` for a later ETA) in one
        pipeline: Redis runs a connection's commands in order, so the state is written before
        any worker can take the message.

        :raises machinery.errors.BackendError: Redis refused the ``SET``.
        :raises machinery.errors.PublishError: Redis refused the message, or could not be reached.
        """
        from machinery_redis.backend import RedisBackend
        from machinery_redis.broker import RedisBroker

        assert isinstance(broker, RedisBroker) and isinstance(backend, RedisBackend)
        state_cmd = backend.pending_command(signature)
        msg_cmd = broker.publish_command(signature, body)
        try:
            state_reply, msg_reply = self.batcher.execute([state_cmd, msg_cmd], raise_on_error=False)
        except redis.RedisError as exc:
            with broker.publish_errors(f"publish {signature.uuid}", signature.uuid):
                raise exc  # translated: PublishError (and ConnectionError when unreachable)
        if isinstance(state_reply, Exception):
            raise BackendError(
                f"store PENDING of {signature.uuid}: redis at {redact_url(self.url)} failed: {state_reply}"
            ) from state_reply
        if isinstance(msg_reply, Exception):
            err = PublishError(f"publish {signature.uuid}: redis at {redact_url(self.url)} failed: {msg_reply}")
            err.task_uuid = signature.uuid
            raise err from msg_reply


def is_cluster(client: Any) -> bool:
    """True when ``client`` talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


@contextlib.contextmanager
def translate_errors(
    what: str,
    url: str,
    error: type[MachineryError],
    connection_error: type[MachineryError],
    **attrs: Any,
) -> Iterator[None]:
    """Turn redis-py exceptions into machinery's error tree (with the URL redacted).

    :param what: the operation, for the message (``publish task_...``).
    :param url: the server URL (credentials are removed).
    :param error: raised for command errors.
    :param connection_error: raised when the server cannot be reached.
    """
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        err = connection_error(f"{what}: cannot reach redis at {redact_url(url)}: {exc}")
        for k, v in attrs.items():
            setattr(err, k, v)
        raise err from exc
    except redis.RedisError as exc:
        err = error(f"{what}: redis at {redact_url(url)} failed: {exc}")
        for k, v in attrs.items():
            setattr(err, k, v)
        raise err from exc
