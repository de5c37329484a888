"""The conformance suite on the template transport.

TEMPLATE: keep one class per role your transport serves. Implement the oracles with your
*raw* client library (bypassing your plugin), so they prove what really reached the server.
Delete ``process_local = True`` for a real server: workers then run as subprocesses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from machinery.testing import (
    BackendConformance,
    BackendOracle,
    BrokerConformance,
    BrokerOracle,
    LockConformance,
    WorkflowConformance,
)
from machinery_template.backend import example_store
from machinery_template.broker import example_server, server_name


class TemplateBrokerOracle(BrokerOracle):
    """Counts a queue's ready and delivered-but-unacknowledged messages on the example server."""

    def __init__(self, url: str) -> None:
        self.server = example_server(server_name(url))

    def message_count(self, queue: str) -> int:
        s = self.server
        with s.cond:
            ready = len(s.ready.get(queue, ()))
            unacked = sum(1 for q, _ in s.unacked.values() if q == queue)
            return ready + unacked


class TemplateBackendOracle(BackendOracle):
    """Reads a stored record, as Go's JSON object, from the example store."""

    def __init__(self, url: str) -> None:
        self.store = example_store(server_name(url))

    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        raw = self.store.get(task_uuid)
        return None if raw is None else json.loads(raw)


class TestTemplateBroker(BrokerConformance):
    process_local = True  # TEMPLATE: delete for a real server

    @pytest.fixture
    def broker_oracle(self, url: str) -> TemplateBrokerOracle:
        return TemplateBrokerOracle(url)


class TestTemplateBackend(BackendConformance):
    @pytest.fixture
    def backend_oracle(self, url: str) -> TemplateBackendOracle:
        return TemplateBackendOracle(url)


class TestTemplateLock(LockConformance):
    process_local = True  # TEMPLATE: delete for a real server


class TestTemplateWorkflow(WorkflowConformance):
    process_local = True  # TEMPLATE: delete for a real server
