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
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pymemcache.exceptions import MemcacheError, MemcacheServerError, MemcacheUnexpectedCloseError

from machinery.plugin import (
    Backend,
    BackendConnectionError,
    BackendError,
    Completion,
    GroupMeta,
    State,
    TaskState,
    decode_group_meta,
    decode_task_state,
    encode_group_meta,
    encode_task_state,
)
from machinery_memcache.transport import MemcacheOptions, MemcacheTransport, parse_servers, server_name

if TYPE_CHECKING:
    from pymemcache.client.base import PooledClient

    from machinery.plugin import Config

__all__ = ["ItemTooLargeError", "MemcacheBackend", "MemcacheOptions", "parse_servers"]

#: memcached reads an expiry above 30 days as an absolute Unix time, not as seconds from now.
MAX_RELATIVE_EXPIRY = 30 * 24 * 3600


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


class MemcacheBackend(Backend):
    """Result backend on one or more memcached servers (``memcache://h1:11211,h2:11211``)."""

    persistent: ClassVar[bool] = False
    config_section: ClassVar[str | None] = "memcache"

    def __init__(self, url: str, config: Config, *, transport: MemcacheTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport: the servers and options parsed once, the pooled clients shared by
        #: backends on this URL.
        self.transport: MemcacheTransport = MemcacheTransport.attach(self, url, config, transport)
        self.options: MemcacheOptions = self.transport.options

    def _client(self, key: str) -> PooledClient:
        return self.transport.connection_for(self).client(key)

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
            raise BackendConnectionError(f"memcached at {server_name(client)} is unreachable: {reason}") from exc
        except MemcacheServerError as exc:
            if "too large" in str(exc):
                raise ItemTooLargeError(key, size) from exc
            raise BackendError(f"memcached at {server_name(client)} refused {op} of {key!r}: {exc}") from exc
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
                raise BackendError(f"memcached at {server_name(client)} did not store the states of {failed}")
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
        """Release the transport (the pooled connections close with the last backend on it)."""
        self.transport.release(self)
