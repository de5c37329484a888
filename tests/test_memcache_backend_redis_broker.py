"""Cross-plugin: the memcache result backend (machinery-memcache) with the Redis broker
(machinery-redis), through the backend and workflow conformance suites."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from pymemcache.client.base import Client

from machinery.testing import BackendConformance, BackendOracle, WorkflowConformance, require_server
from machinery_memcache.backend import parse_servers


class MemcacheOracle(BackendOracle):
    """Reads items with a plain pymemcache client."""

    def __init__(self, url: str) -> None:
        host, port = parse_servers(url)[0]  # type: ignore[misc]
        self.client = Client((host, port), default_noreply=False)

    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        """The item under the task UUID, as Go's JSON object."""
        raw = self.client.get(task_uuid)
        return None if raw is None else json.loads(raw)


class MemcacheWithRedis:
    """Fixtures: results in memcached (``MEMCACHE_URL``), tasks through Redis (``REDIS_URL``)."""

    @pytest.fixture
    def url(self) -> str:
        url = os.environ.get("MEMCACHE_URL", "memcache://127.0.0.1:11211")
        require_server(url)
        return url

    @pytest.fixture
    def broker_url(self) -> str:
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        require_server(url)
        return url

    @pytest.fixture
    def backend_oracle(self, url: str) -> Iterator[MemcacheOracle]:
        oracle = MemcacheOracle(url)
        yield oracle
        oracle.client.close()


class TestMemcacheBackendWithRedisBroker(MemcacheWithRedis, BackendConformance):
    pass


class TestMemcacheWorkflowWithRedisBroker(MemcacheWithRedis, WorkflowConformance):
    pass
