"""The conformance suite, run against the core's ``memory://`` reference until you switch the
URL to your server.

TEMPLATE: set ``SERVER_URL``'s default to your server (``os.environ.get("FOO_URL",
"foo://127.0.0.1:1234")``) once ``test_skeleton.py::test_what_is_left`` lists nothing, and
implement the two oracles with your *raw* client (bypassing your plugin), so they prove what
really reached the server. Keep one suite class per role you serve.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from machinery.testing import (
    BackendConformance,
    BackendOracle,
    BrokerConformance,
    BrokerOracle,
    LockConformance,
    MemoryBackendOracle,
    MemoryBrokerOracle,
    WorkflowConformance,
    require_server,
)

#: TEMPLATE: your server's URL. Empty: the suite runs on the memory:// reference.
SERVER_URL = os.environ.get("TEMPLATE_URL", "")
#: True while the suite runs on memory:// (in-process: workers run as threads, and the tests
#: that need another process skip).
ON_REFERENCE = not SERVER_URL


@pytest.fixture
def url() -> str:
    """The URL under test: your server (unreachable: fails in CI, skips locally), or a fresh
    memory:// store per test."""
    if ON_REFERENCE:
        return f"memory://template-{uuid.uuid4().hex[:12]}"
    require_server(SERVER_URL)
    return SERVER_URL


class TemplateBrokerOracle(BrokerOracle):
    """Counts a queue's messages on your server with the raw client."""

    def __init__(self, url: str) -> None:
        self.url = url  # TEMPLATE: open a raw client here

    def message_count(self, queue: str) -> int:
        """Ready plus delivered-but-unacknowledged messages of ``queue`` (not the delayed ones)."""
        raise NotImplementedError("TEMPLATE: count the queue's messages with your raw client")


class TemplateBackendOracle(BackendOracle):
    """Reads a stored record, as Go's JSON object, with the raw client."""

    def __init__(self, url: str) -> None:
        self.url = url  # TEMPLATE: open a raw client here

    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        """The task's record as Go's JSON object; None when nothing is stored."""
        raise NotImplementedError("TEMPLATE: read the task's record with your raw client")


@pytest.fixture
def broker_oracle(url: str) -> BrokerOracle:
    return MemoryBrokerOracle(url) if ON_REFERENCE else TemplateBrokerOracle(url)


@pytest.fixture
def backend_oracle(url: str) -> BackendOracle:
    return MemoryBackendOracle(url) if ON_REFERENCE else TemplateBackendOracle(url)


class TestTemplateBroker(BrokerConformance):
    process_local = ON_REFERENCE


class TestTemplateBackend(BackendConformance):
    process_local = ON_REFERENCE


class TestTemplateLock(LockConformance):
    process_local = ON_REFERENCE


class TestTemplateWorkflow(WorkflowConformance):
    process_local = ON_REFERENCE
