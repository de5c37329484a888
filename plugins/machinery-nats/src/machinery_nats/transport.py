"""The NATS transport: the URL and the ``nats:`` section parsed once, and the connection.

nats-py is asyncio-only: the transport owns the event loop thread its client lives on, connects
there on first use and makes the stream when it is missing. Brokers on one URL and configuration
share the loop, the connection and the stream check; the last one closed closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from machinery.plugin import ConfigError, EventLoopThread, Transport, parse_options

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from machinery.plugin import Config

__all__ = ["NatsOptions", "NatsTransport"]

BAD_TOKEN = re.compile(r"[\s*>]|^\.|\.$|\.\.")


@dataclass(frozen=True)
class NatsOptions:
    """Options of the ``nats:`` section (or the URL's query string, which overrides it).

    :param stream: the JetStream stream holding every queue (created when missing).
    :param subject_prefix: first token of the subjects (``<prefix>.q.<queue>``).
    :param ack_wait: seconds before an unacknowledged message is delivered again (the
        redelivery timeout after a worker dies).
    :param max_deliveries: a message delivered more than this many times goes to the dead
        letters instead (0: no limit). Every delivery counts, including the core's delayed
        give-backs for an ETA and for unknown task names.
    :param max_ack_pending: most messages of one queue delivered and not yet acknowledged.
    :param storage: ``file`` or ``memory`` (when the stream is created).
    :param replicas: stream replicas (when it is created).
    :param connect_timeout: seconds to connect.
    """

    stream: str = "MACHINERY"
    subject_prefix: str = "machinery"
    ack_wait: float = 30.0
    max_deliveries: int = 0
    max_ack_pending: int = 20000
    storage: str = "file"
    replicas: int = 1
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.stream):
            raise ConfigError("nats.stream", f"not a stream name: {self.stream!r}")
        if BAD_TOKEN.search(self.subject_prefix) or not self.subject_prefix:
            raise ConfigError("nats.subject_prefix", f"not a subject prefix: {self.subject_prefix!r}")
        if self.ack_wait <= 0:
            raise ConfigError("nats.ack_wait", "must be > 0")
        if self.max_deliveries < 0:
            raise ConfigError("nats.max_deliveries", "must be >= 0")
        if self.storage not in ("file", "memory"):
            raise ConfigError("nats.storage", "must be file or memory")


class NatsTransport(Transport):
    """``nats://[user:password@]host:4222[,host2:4222][?option=value]`` and the ``nats:`` section.

    Its connection is :attr:`loop`, the thread the nats-py client runs on; coroutines get the
    client's JetStream context from :meth:`jetstream`.

    :raises ConfigError: a bad option.
    """

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {"broker": "machinery_nats.broker:NatsBroker"}
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = (
        nats.errors.ConnectionClosedError,
        nats.errors.NoServersError,
        nats.errors.TimeoutError,
        nats.errors.StaleConnectionError,
        nats.errors.OutboundBufferLimitError,
        nats.js.errors.ServiceUnavailableError,
        OSError,
    )

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        parts = urlsplit(url)
        self.options = parse_options(NatsOptions, "nats", config.section("nats"), dict(parse_qsl(parts.query)))
        netloc = parts.netloc.rpartition("@")
        self._servers = [f"{parts.scheme}://{h}" for h in netloc[2].split(",")]
        user, _, password = netloc[0].partition(":")
        self._auth = {"user": unquote(user), "password": unquote(password)} if user else {}
        #: The event loop thread the client lives on (started on first use).
        self.loop = EventLoopThread("machinery-nats")
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._ready = False
        self._connecting = asyncio.Lock()

    def open(self) -> EventLoopThread:
        """:attr:`loop` (the client connects on it at the first :meth:`jetstream`)."""
        return self.loop

    def close_connection(self, connection: EventLoopThread) -> None:
        """Close the client on the loop, then stop the loop."""
        nc, self._nc, self._js, self._ready = self._nc, None, None, False
        if nc is not None:
            with contextlib.suppress(Exception):  # closing must not raise; the server drops us anyway
                connection.run(nc.close(), self.options.connect_timeout)
        self._connecting = asyncio.Lock()
        connection.close()

    async def jetstream(self) -> JetStreamContext:
        """The JetStream context, connecting (and making the stream) first if needed; on :attr:`loop`."""
        if self._js is not None and self._ready and self._nc is not None and not self._nc.is_closed:
            return self._js
        async with self._connecting:  # one connection, however many brokers ask at once
            if self._nc is None or self._nc.is_closed or self._js is None:
                self._nc = await nats.connect(
                    self._servers, connect_timeout=self.options.connect_timeout, max_reconnect_attempts=-1, **self._auth
                )
                self._js, self._ready = self._nc.jetstream(), False
            if not self._ready:
                await self._ensure_stream(self._js)
                self._ready = True
            return self._js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        o = self.options
        try:
            await js.stream_info(o.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                name=o.stream,
                subjects=[f"{o.subject_prefix}.q.>", f"{o.subject_prefix}.dead.>"],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE if o.storage == "file" else api.StorageType.MEMORY,
                num_replicas=o.replicas,
            )
