"""The conformance suite on memcached, with the suite's default (embedded) broker."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from pymemcache.client.base import Client

from machinery.testing import BackendConformance, BackendOracle, WorkflowConformance
from machinery_memcache.backend import parse_servers


class MemcacheOracle(BackendOracle):
    """Reads items with a plain pymemcache client (one server, as the tests use)."""

    def __init__(self, url: str) -> None:
        host, port = parse_servers(url)[0]  # type: ignore[misc]
        self.client = Client((host, port), default_noreply=False)

    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        """The item under the task UUID, as Go's JSON object."""
        raw = self.client.get(task_uuid)
        return None if raw is None else json.loads(raw)

    def close(self) -> None:
        """Close the connection."""
        self.client.close()


class TestMemcacheBackend(BackendConformance):
    @pytest.fixture
    def backend_oracle(self, url: str) -> MemcacheOracle:
        return MemcacheOracle(url)


class TestMemcacheWorkflow(WorkflowConformance):
    """Worker subprocesses consuming the embedded broker, storing results in memcached."""
