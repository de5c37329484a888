"""The conformance suite against the real RabbitMQ (``AMQP_URL``, default 127.0.0.1:5672)."""

from __future__ import annotations

import pytest
from conftest import RawBackendOracle, RawBrokerOracle

from machinery.testing import BackendConformance, BackendOracle, BrokerConformance, BrokerOracle, WorkflowConformance


class TestAMQPBroker(BrokerConformance):
    @pytest.fixture
    def broker_oracle(self) -> BrokerOracle:
        return RawBrokerOracle()


class TestAMQPBackend(BackendConformance):
    @pytest.fixture
    def backend_oracle(self) -> BackendOracle:
        return RawBackendOracle()


class TestAMQPWorkflow(WorkflowConformance):
    """End to end with worker subprocesses: RabbitMQ broker, and (the suite's default for a
    scheme that serves both roles) the AMQP result backend."""
