"""The conformance suite against the real RabbitMQ (``AMQP_URL``, default 127.0.0.1:5672)."""

from __future__ import annotations

import pytest
from conftest import RawBackendOracle, RawBrokerOracle

from machinery.testing.backend import BackendConformance
from machinery.testing.broker import BrokerConformance
from machinery.testing.oracle import BackendOracle, BrokerOracle


class TestAMQPBroker(BrokerConformance):
    @pytest.fixture
    def broker_oracle(self) -> BrokerOracle:
        return RawBrokerOracle()


class TestAMQPBackend(BackendConformance):
    @pytest.fixture
    def backend_oracle(self) -> BackendOracle:
        return RawBackendOracle()
