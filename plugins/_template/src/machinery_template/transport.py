"""``TemplateTransport``: what the broker, backend and lock of one URL share.

The core keeps one transport per URL and configuration. It parses both once (here, in
``__init__``: a bad URL or option fails when the ``Server`` is built), opens the connection on
first use (:meth:`TemplateTransport.open`), and closes it when the last role it handed out is
closed (:meth:`TemplateTransport.close_connection`; the core keeps the count). The roles read
``self.transport.connection_for(self)``. Lines to revisit are marked ``TEMPLATE:``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from machinery.plugin import ConfigError, Transport, parse_options, redact_url

if TYPE_CHECKING:
    from machinery.plugin import Config

__all__ = ["TemplateOptions", "TemplateTarget", "TemplateTransport", "parse_url"]

SCHEME = "template"  # TEMPLATE: your scheme
DEFAULT_PORT = 7000  # TEMPLATE: your server's port


@dataclass(frozen=True)
class TemplateOptions:
    """The ``template:`` config section (overridden by the URL's query string), parsed with
    ``parse_options``, which reports unknown keys and bad values by name.

    TEMPLATE: one field per option, each with a default; Go Machinery's key names where Go has
    the option.

    :param connect_timeout: seconds to wait for the server when connecting.
    :param visibility_timeout: seconds before a dead consumer's unacknowledged messages come back.
    """

    connect_timeout: float = 5.0
    visibility_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0:
            raise ConfigError(f"{SCHEME}.connect_timeout", "must be > 0 seconds")
        if self.visibility_timeout <= 0:
            raise ConfigError(f"{SCHEME}.visibility_timeout", "must be > 0 seconds")


@dataclass(frozen=True)
class TemplateTarget:
    """Where to connect, parsed from the URL.

    :param host: the server's host name or address.
    :param port: its port.
    :param path: the path without slashes (a database, a virtual host...; "" when absent).
    :param username: the user name, if any.
    :param password: the password, if any (never shown: see ``redact_url``).
    :param query: options given in the query string.
    """

    host: str
    port: int = DEFAULT_PORT
    path: str = ""
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    query: Mapping[str, str] = field(default_factory=dict, repr=False)


def parse_url(url: str, key: str = "broker") -> TemplateTarget:
    """Parse ``template://[user:password@]host[:port][/path][?option=value...]``.

    TEMPLATE: your URL forms (Go Machinery's, when Go has the transport).

    :param key: the config key the URL came from, for the error message.
    :raises ConfigError: naming the (redacted) URL and what is wrong with it.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(key, f"{redact_url(url)!r}: {exc}") from None
    if parts.scheme.lower() != SCHEME:
        raise ConfigError(key, f"expected {SCHEME}://host[:port], got {redact_url(url)!r}")
    if not parts.hostname:
        raise ConfigError(key, f"{redact_url(url)!r}: missing host")
    return TemplateTarget(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        path=parts.path.strip("/"),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
    )


class TemplateTransport(Transport):
    """A ``template://`` URL and ``template:`` section, parsed once, and the connection the
    roles share.

    :param url: the URL (see :func:`parse_url`).
    :param config: the core configuration.
    :raises ConfigError: a bad URL or option.
    """

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {  # TEMPLATE: the roles you serve
        "broker": "machinery_template.broker:TemplateBroker",
        "backend": "machinery_template.backend:TemplateBackend",
        "lock": "machinery_template.lock:TemplateLock",
    }
    #: TEMPLATE: your client library's "cannot reach the server" exceptions.
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = (ConnectionError,)

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        #: Where to connect.
        self.target = parse_url(url)
        #: The ``template:`` section and the URL's query options.
        self.options: TemplateOptions = parse_options(
            TemplateOptions, SCHEME, config.section(SCHEME), self.target.query
        )

    def open(self) -> Any:
        """Connect (called once, on first use, from any thread) and return the client.

        TEMPLATE: create your client or pool from :attr:`target` and :attr:`options`, e.g.
        ``return foo.Client(self.target.host, self.target.port, timeout=self.options.connect_timeout)``;
        translate its connection errors into ``BrokerConnectionError``/``BackendConnectionError``
        where the roles call it.
        """
        raise NotImplementedError("TEMPLATE: TemplateTransport.open: connect with your client library")

    def close_connection(self, connection: Any) -> None:
        """Close what :meth:`open` returned (the last role was closed).

        TEMPLATE: your client's close, if it is not ``close()``.
        """
        connection.close()
