"""Oracles: what the conformance suite asks of the raw store, bypassing the plugin under test.

A plugin's own API cannot prove that a message is still in its queue after a crash, or that a
state really reached the server. The plugin author implements these two small classes with the
*raw* client library (``redis.Redis``, ``pika``, ``boto3``...) and returns them from the
``broker_oracle`` and ``backend_oracle`` fixtures.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pytest

from machinery.config import redact_url

__all__ = ["BackendOracle", "BrokerOracle", "MemoryBackendOracle", "MemoryBrokerOracle", "require_server"]


class BrokerOracle(ABC):
    """Counts messages with the raw client."""

    @abstractmethod
    def message_count(self, queue: str) -> int:
        """Messages of ``queue`` that are ready **or** delivered but not yet acknowledged.

        Messages held for a future ETA (delayed) are not counted. An unknown queue has 0.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the raw client (called by nothing in the suite; use it in your fixture)."""


class BackendOracle(ABC):
    """Reads stored states with the raw client."""

    @abstractmethod
    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        """The record stored for ``task_uuid`` as Go's JSON object (``{"TaskUUID": ..., "State":
        ...}``), or None when nothing is stored.

        Build it from whatever the store holds: ``json.loads(raw_bytes)`` for stores that keep
        Go's JSON, or the per-field document/item for stores that keep fields. The suite reads
        it with :func:`machinery.signature.task_state_from_mapping`.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the raw client."""


class MemoryBrokerOracle(BrokerOracle):
    """The oracle of the ``memory://`` reference: reads the named store directly.

    :param url: the ``memory://name`` URL under test.
    """

    def __init__(self, url: str) -> None:
        from machinery.builtin.memory._store import store_name

        self.name = store_name(url)

    def message_count(self, queue: str) -> int:
        """Ready plus delivered-but-unacknowledged messages of ``queue`` in the store."""
        from machinery.builtin.memory._store import _brokers

        store = _brokers.get(self.name)
        if store is None:
            return 0
        with store.cond:
            q = store.queues.get(queue)
            ready = len(q.ready) if q else 0
            return ready + sum(1 for (qname, _, _) in store.unacked.values() if qname == queue)


class MemoryBackendOracle(BackendOracle):
    """The oracle of the ``memory://`` reference: a stored state as Go's JSON object.

    :param url: the ``memory://name`` URL under test.
    """

    def __init__(self, url: str) -> None:
        from machinery.builtin.memory._store import store_name

        self.name = store_name(url)

    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        """The state stored for ``task_uuid``, encoded as Go would read it."""
        import json

        from machinery.builtin.memory._store import _backends
        from machinery.signature import encode_task_state
        from machinery.state import TaskState

        store = _backends.get(self.name)
        entry = store.records.get(task_uuid) if store else None
        if entry is None or not isinstance(entry[1], TaskState):
            return None
        result: dict[str, Any] = json.loads(encode_task_state(entry[1]))
        return result


def _host_port(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url.split(",")[0])
    try:
        return parts.hostname or "127.0.0.1", parts.port
    except ValueError:
        return parts.hostname or "127.0.0.1", None


def require_server(url: str, host: str | None = None, port: int | None = None, timeout: float = 2.0) -> None:
    """Make sure the server behind ``url`` accepts TCP connections, or stop the test.

    When nothing listens: **fail** if the ``CI`` environment variable is set (CI must never go
    green having tested nothing), **skip** otherwise, naming the URL tried (credentials
    redacted).

    :param url: the URL under test (only shown, redacted, in the message).
    :param host: host to probe (default: the URL's host).
    :param port: port to probe (default: the URL's port; required when the URL has none).
    :param timeout: connection timeout in seconds.
    """
    url_host, url_port = _host_port(url)
    host = host or url_host
    port = port or url_port
    if port is None:
        raise ValueError(f"require_server: no port in {redact_url(url)!r}; pass port=")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        reason = f"server for {redact_url(url)} not reachable at {host}:{port} ({exc.strerror or exc})"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this is an error, not a skip", pytrace=False)
    pytest.skip(reason)
