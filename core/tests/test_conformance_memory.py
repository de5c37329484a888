"""The conformance suite against the in-process ``memory://`` transport (the reference
implementation). ``process_local``: memory cannot be shared with other processes, so workflow
workers run as threads and the cross-process tests skip with that reason."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from machinery.builtin.memory import _store as memory
from machinery.signature import encode_task_state
from machinery.state import TaskState
from machinery.testing import (
    BackendConformance,
    BackendOracle,
    BrokerConformance,
    BrokerOracle,
    ControlConformance,
    LockConformance,
    WorkflowConformance,
)

URL = "memory://conformance"


@pytest.fixture
def url() -> str:
    return URL


class MemoryBrokerOracle(BrokerOracle):
    """Reads the memory broker's store directly."""

    def message_count(self, queue: str) -> int:
        store = memory._brokers.get(URL.partition("://")[2])
        if store is None:
            return 0
        with store.cond:
            q = store.queues.get(queue)
            ready = len(q.ready) if q else 0
            unacked = sum(1 for (qname, _, _) in store.unacked.values() if qname == queue)
        return ready + unacked


class MemoryBackendOracle(BackendOracle):
    """Reads the memory backend's store directly, as Go's JSON."""

    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        store = memory._backends.get(URL.partition("://")[2])
        entry = store.records.get(task_uuid) if store else None
        if entry is None or not isinstance(entry[1], TaskState):
            return None
        result: dict[str, Any] = json.loads(encode_task_state(entry[1]))
        return result


class TestMemoryBroker(BrokerConformance):
    process_local = True

    @pytest.fixture
    def broker_oracle(self) -> BrokerOracle:
        return MemoryBrokerOracle()


class TestMemoryBackend(BackendConformance):
    process_local = True

    @pytest.fixture
    def backend_oracle(self) -> BackendOracle:
        return MemoryBackendOracle()


class TestMemoryLock(LockConformance):
    process_local = True


class TestMemoryWorkflow(WorkflowConformance):
    process_local = True


class TestMemoryControl(ControlConformance):
    process_local = True
