"""The memcached transport: the URL's servers and the ``memcache:`` section parsed once, and
their pooled clients (:class:`MemcacheServers`), shared by every backend on the same URL and
configuration and closed with the last of them.

pymemcache is imported here, so only when a ``memcache://`` URL is used.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pymemcache.client.base import PooledClient
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import MemcacheUnexpectedCloseError

from machinery.plugin import ConfigError, Transport, parse_options, redact_url

if TYPE_CHECKING:
    from machinery.plugin import Config

__all__ = ["DEFAULT_PORT", "MemcacheOptions", "MemcacheServers", "MemcacheTransport", "parse_servers", "server_name"]

DEFAULT_PORT = 11211


@dataclass(frozen=True)
class MemcacheOptions:
    """The ``memcache:`` config section.

    :param hashing: ``go`` (default) picks a key's server as Go's gomemcache does (CRC-32 of the
        key modulo the number of servers, in URL order), so Go and Python find the same item;
        ``consistent`` uses rendezvous hashing, which moves fewer keys when servers change.
    :param connect_timeout: seconds to wait for a connection.
    :param timeout: seconds to wait for a reply.
    """

    hashing: str = "go"
    connect_timeout: float = 5.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.hashing not in ("go", "consistent"):
            raise ConfigError("memcache.hashing", f"expected 'go' or 'consistent', got {self.hashing!r}")


def parse_servers(url: str) -> list[tuple[str, int] | str]:
    """The servers of ``memcache://host1[:port1][,host2[:port2],...]``, in order.

    Each is a ``(host, port)`` pair (port 11211 when omitted; IPv6 hosts in brackets) or, as
    gomemcache accepts, a Unix socket path (``memcache:///run/memcached.sock``).

    :raises ConfigError: when the list is empty or a server is malformed.
    """
    servers: list[tuple[str, int] | str] = []
    for item in url.partition("://")[2].split(","):
        item = item.strip()
        if item.startswith("/"):
            servers.append(item)
            continue
        item = item.rstrip("/")
        if item.startswith("["):  # [IPv6 address]:port
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if not host or not (port or "1").isdigit() or not 0 < int(port or DEFAULT_PORT) < 65536:
            raise ConfigError("result_backend", f"bad memcached server {item!r} in {redact_url(url)!r}")
        servers.append((host, int(port or DEFAULT_PORT)))
    return servers


def server_name(client: PooledClient) -> str:
    """``host:port`` (or the socket path) of a pooled client, for messages."""
    server = client.server
    return server if isinstance(server, str) else f"{server[0]}:{server[1]}"


class MemcacheServers:
    """The pooled clients of a URL's servers (each connects on first use) and the choice of a
    key's server.

    :param servers: from :func:`parse_servers`, in URL order.
    :param options: the ``memcache:`` section.
    """

    def __init__(self, servers: list[tuple[str, int] | str], options: MemcacheOptions) -> None:
        kwargs = {"connect_timeout": options.connect_timeout, "timeout": options.timeout, "default_noreply": False}
        #: One pooled client per server, in URL order.
        self.clients = [PooledClient(s, **kwargs) for s in servers]
        self._by_name = {server_name(c): c for c in self.clients}
        self._ring = RendezvousHash(list(self._by_name)) if options.hashing == "consistent" else None

    def client(self, key: str) -> PooledClient:
        """The client of the server holding ``key`` (gomemcache's CRC-32 choice, or rendezvous)."""
        if self._ring is not None:
            return self._by_name[self._ring.get_node(key)]
        return self.clients[zlib.crc32(key.encode()) % len(self.clients)]

    def close(self) -> None:
        """Close every pooled connection."""
        for client in self.clients:
            client.close()


class MemcacheTransport(Transport):
    """``memcache://host1[:port1][,host2[:port2],...]`` and the ``memcache:`` section; its
    connection is a :class:`MemcacheServers`.

    :raises ConfigError: a bad server list or option.
    """

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {"backend": "machinery_memcache.backend:MemcacheBackend"}
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError, MemcacheUnexpectedCloseError)

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        #: The ``memcache:`` section.
        self.options = parse_options(MemcacheOptions, "memcache", config.section("memcache"))
        #: The servers, in URL order.
        self.servers = parse_servers(url)

    def open(self) -> MemcacheServers:
        """The pooled clients (no connection is made until a command)."""
        return MemcacheServers(self.servers, self.options)

    def close_connection(self, connection: MemcacheServers) -> None:
        """Close every pooled connection."""
        connection.close()
