"""Memcached result backend, laid out as Go Machinery's ``memcache://`` backend.

Each task state and group meta is one item: the key is the task or group UUID, the value is
Go Machinery's JSON (from the core codec) and the item expires after ``results_expire_in``.
A Go worker and a Python worker pointed at the same servers read each other's results.

Memcached is a cache: a restart or an eviction loses records, so the backend declares
``persistent = False``. A lost state reads as no state at all, and ``AsyncResult.get`` then
raises :class:`~machinery.errors.StateNotFoundError` instead of waiting forever.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pymemcache.client.base import PooledClient
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import MemcacheError, MemcacheServerError, MemcacheUnexpectedCloseError

from machinery.plugin import (
    Backend,
    BackendConnectionError,
    BackendError,
    Completion,
    ConfigError,
    GroupMeta,
    State,
    TaskState,
    decode_group_meta,
    decode_task_state,
    encode_group_meta,
    encode_task_state,
    parse_options,
    redact_url,
)

if TYPE_CHECKING:
    from machinery.plugin import Config

__all__ = ["ItemTooLargeError", "MemcacheBackend", "MemcacheOptions", "parse_servers"]

#: memcached reads an expiry above 30 days as an absolute Unix time, not as seconds from now.
MAX_RELATIVE_EXPIRY = 30 * 24 * 3600
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


class ItemTooLargeError(BackendError):
    """A record is bigger than memcached's item size limit. Not ``retryable``: a worker stores
    FAILURE instead of redelivering the task.

    :param key: the task (or group) UUID.
    :param size: the encoded record's size in bytes.
    """

    retryable = False

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.size = size
        super().__init__(
            f"task {key}: its state is {size} bytes, more than memcached's item size limit "
            "(1 MB unless memcached runs with -I); the result was not stored"
        )


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


def _name(client: PooledClient) -> str:
    server = client.server
    return server if isinstance(server, str) else f"{server[0]}:{server[1]}"


class MemcacheBackend(Backend):
    """Result backend on one or more memcached servers (``memcache://h1:11211,h2:11211``)."""

    persistent: ClassVar[bool] = False
    config_section: ClassVar[str | None] = "memcache"

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        opts = parse_options(MemcacheOptions, "memcache", config.section("memcache"))
        servers = parse_servers(url)
        kwargs = {"connect_timeout": opts.connect_timeout, "timeout": opts.timeout, "default_noreply": False}
        self._clients = [PooledClient(s, **kwargs) for s in servers]  # each connects on first use
        self._by_name = {_name(c): c for c in self._clients}
        self._ring = RendezvousHash(list(self._by_name)) if opts.hashing == "consistent" else None

    def _client(self, key: str) -> PooledClient:
        if self._ring is not None:
            return self._by_name[self._ring.get_node(key)]
        return self._clients[zlib.crc32(key.encode()) % len(self._clients)]

    def _expire(self) -> int:
        secs = self.lifetime()  # Go's getExpirationTimestamp: 0 means 3600 s
        if secs is None:
            return 0  # memcached's "never expires" (results_expire_in: -1)
        return secs if secs <= MAX_RELATIVE_EXPIRY else int(time.time()) + secs

    def _call(self, client: PooledClient, key: str, op: str, *args: Any, retry: bool = True, size: int = 0) -> Any:
        """Run one pymemcache command, translating its errors into machinery's.

        After a memcached restart every idle pooled connection is stale; each one that fails is
        dropped, so a command is retried once per idle connection, then on a fresh one. Never
        retried: timeouts, and ``retry=False`` commands (a lost reply may hide a stored ``cas``).
        """
        stale = len(client.client_pool.free) if retry else 0
        try:
            for _ in range(stale):
                try:
                    return getattr(client, op)(*args)
                except (ConnectionError, MemcacheUnexpectedCloseError):
                    continue
            return getattr(client, op)(*args)
        except (OSError, MemcacheUnexpectedCloseError) as exc:
            reason = str(exc) or "connection closed"
            raise BackendConnectionError(f"memcached at {_name(client)} is unreachable: {reason}") from exc
        except MemcacheServerError as exc:
            if "too large" in str(exc):
                raise ItemTooLargeError(key, size) from exc
            raise BackendError(f"memcached at {_name(client)} refused {op} of {key!r}: {exc}") from exc
        except MemcacheError as exc:
            raise BackendError(f"memcached {op} of {key!r} failed: {exc}") from exc

    def _put(self, key: str, value: bytes) -> None:
        self._call(self._client(key), key, "set", key, value, self._expire(), size=len(value))

    def _store_state(self, state: TaskState) -> None:
        """Write the state's Go JSON under the task UUID.

        A state too big for memcached is first replaced by a small FAILURE that says why, so
        that ``AsyncResult.get`` reports it instead of waiting; then the error is raised.
        """
        try:
            self._put(state.task_uuid, encode_task_state(state))
        except ItemTooLargeError as exc:
            failure = dataclasses.replace(state, state=State.FAILURE.value, results=None, error=str(exc))
            self._put(state.task_uuid, encode_task_state(failure))
            raise

    def _load_state(self, task_uuid: str) -> TaskState | None:
        """Read a state; None when absent, expired, evicted or lost by a restart."""
        raw = self._call(self._client(task_uuid), task_uuid, "get", task_uuid)
        return None if raw is None else decode_task_state(raw)

    def _load_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """Read several states with one ``get_many`` per server."""
        batches: dict[PooledClient, list[str]] = defaultdict(list)
        for uuid in task_uuids:
            batches[self._client(uuid)].append(uuid)
        found: dict[str, bytes] = {}
        for client, keys in batches.items():
            found.update(self._call(client, keys[0], "get_many", keys))
        return [decode_task_state(found[u]) if u in found else None for u in task_uuids]

    def _store_states(self, states: Sequence[TaskState], *, wait: bool = True) -> Completion:
        """Write several states with one ``set_many`` per server (``wait`` makes no difference)."""
        batches: dict[PooledClient, dict[str, bytes]] = defaultdict(dict)
        for st in states:
            batches[self._client(st.task_uuid)][st.task_uuid] = encode_task_state(st)
        for client, values in batches.items():
            failed = self._call(client, next(iter(values)), "set_many", values, self._expire())
            if failed:
                raise BackendError(f"memcached at {_name(client)} did not store the states of {failed}")
        return Completion.stored()

    def _store_group(self, meta: GroupMeta) -> None:
        """Write the group meta's Go JSON under the group UUID."""
        self._put(meta.group_uuid, encode_group_meta(meta))

    def _load_group(self, group_uuid: str) -> GroupMeta | None:
        """Read a group meta; None when absent or lost."""
        raw = self._call(self._client(group_uuid), group_uuid, "get", group_uuid)
        return None if raw is None else decode_group_meta(raw)

    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        """Set ``ChordTriggered`` in the group meta with gets/cas: True for exactly one caller.

        ``cas`` stores only if nobody wrote the item since our ``gets``; on a conflict we read
        again. A set ``Lock`` flag means a Go worker is triggering this chord right now.
        """
        client = self._client(group_uuid)
        while True:
            raw, token = self._call(client, group_uuid, "gets", group_uuid)
            if raw is None:
                return False
            meta = decode_group_meta(raw)
            if meta.chord_triggered or meta.lock:
                return False
            meta.chord_triggered = True
            value = encode_group_meta(meta)
            # Never retried: a lost reply to an applied cas must not become a second cas.
            if self._call(client, group_uuid, "cas", group_uuid, value, token, self._expire(), retry=False):
                return True

    def _delete(self, uuid: str) -> None:
        """Delete an item; absent items are fine."""
        self._call(self._client(uuid), uuid, "delete", uuid)

    def close(self) -> None:
        """Close every pooled connection."""
        for client in self._clients:
            client.close()
