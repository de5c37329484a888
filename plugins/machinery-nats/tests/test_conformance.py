"""The machinery conformance suite on NATS JetStream."""

from __future__ import annotations

from typing import ClassVar

from conftest import ACK_WAIT

from machinery.testing import BrokerConformance, WorkflowConformance


class TestNatsBroker(BrokerConformance):
    redelivery_timeout: ClassVar[float | None] = ACK_WAIT


class TestNatsWorkflow(WorkflowConformance):
    pass
