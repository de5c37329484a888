"""The conformance suite against the in-process ``memory://`` transport (the reference
implementation). ``process_local``: memory cannot be shared with other processes, so workflow
workers run as threads and the cross-process tests skip with that reason."""

from __future__ import annotations

import pytest

from machinery.testing import (
    BackendConformance,
    BackendOracle,
    BrokerConformance,
    BrokerOracle,
    ControlConformance,
    LockConformance,
    MemoryBackendOracle,
    MemoryBrokerOracle,
    WorkflowConformance,
)

URL = "memory://conformance"


@pytest.fixture
def url() -> str:
    return URL


class TestMemoryBroker(BrokerConformance):
    process_local = True

    @pytest.fixture
    def broker_oracle(self) -> BrokerOracle:
        return MemoryBrokerOracle(URL)


class TestMemoryBackend(BackendConformance):
    process_local = True

    @pytest.fixture
    def backend_oracle(self) -> BackendOracle:
        return MemoryBackendOracle(URL)


class TestMemoryLock(LockConformance):
    process_local = True


class TestMemoryWorkflow(WorkflowConformance):
    process_local = True


class TestMemoryControl(ControlConformance):
    process_local = True
