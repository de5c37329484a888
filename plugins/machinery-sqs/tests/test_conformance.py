"""The conformance suite on SQS (broker), DynamoDB (backend and lock), and both together with a
worker process, against the real server behind ``AWS_ENDPOINT_URL``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from conftest import ACCOUNT, endpoint_ok, raw_client, table_options

from machinery.testing import (
    BackendConformance,
    BackendOracle,
    BrokerConformance,
    BrokerOracle,
    LockConformance,
    WorkflowConformance,
)
from machinery.testing.pools import PoolConformance

#: CI's env.sh gives ``http://127.0.0.1:5000/<account>`` (Go's queue-URL form on a local server).
SQS_URL = os.environ.get("SQS_URL", f"sqs://us-east-1/{ACCOUNT}")
DYNAMODB_URL = os.environ.get("DYNAMODB_URL", "dynamodb://us-east-1")
#: Go's URL forms; boto3 still talks to AWS_ENDPOINT_URL.
GO_SQS_URL = f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}"
GO_DYNAMODB_URL = "https://dynamodb.us-east-1.amazonaws.com"

#: A 4-second visibility timeout so redelivery tests are quick (with 2 s, a heartbeat late by a
#: second on a loaded CI machine let SQS hand a held message to a second consumer), and
#: DelaySeconds capped at 1 s so every ETA test also takes the "longer than SQS can delay" path
#: (re-hiding on receipt).
SQS_OPTIONS = {"visibility_timeout": 4, "max_delay_seconds": 1}
#: How late a delayed message may arrive. SQS delays are whole seconds (a 0.5 s retry is sent
#: with ``DelaySeconds=1``), and moto's ``ReceiveMessage`` looks again only once a second while it
#: long-polls, and ends the poll empty when that second runs past its wait. A message that becomes
#: visible during one poll can therefore be received only by the next one: 0.5 s asked, 2.0 s
#: seen (stop 33's CI). Real SQS returns such a message as soon as it is visible.
SQS_ETA_TOLERANCE = 2.5


class SQSOracle(BrokerOracle):
    """Counts visible plus in-flight messages with a plain boto3 client."""

    def __init__(self) -> None:
        self.sqs = raw_client("sqs")

    def message_count(self, queue: str) -> int:
        try:
            url = self.sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        except self.sqs.exceptions.QueueDoesNotExist:
            return 0
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


class DynamoDBOracle(BackendOracle):
    """Reads task-state items with a plain boto3 client and turns them into Go's JSON object.

    The stored layout: Go's attribute names, ``Results`` values as strings (JSON text, except
    for ``string`` results which are stored as they are), ``TTL`` the absolute expiry.
    """

    def __init__(self, table: str) -> None:
        from boto3.dynamodb.types import TypeDeserializer

        self.db = raw_client("dynamodb")
        self.table = table
        self.des = TypeDeserializer()

    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        item = self.db.get_item(TableName=self.table, Key={"TaskUUID": {"S": task_uuid}}, ConsistentRead=True).get(
            "Item"
        )
        if item is None:
            return None
        d = {k: self.des.deserialize(v) for k, v in item.items()}
        d.pop("TTL", None)
        results = []
        for r in d.get("Results") or ():
            value = r["Value"] if r["Type"] == "string" else json.loads(r["Value"])
            results.append({"Type": r["Type"], "Value": value})
        d["Results"] = results if d.get("Results") is not None else None
        return d


@pytest.fixture(autouse=True)
def _server_up() -> None:
    endpoint_ok()


@pytest.fixture
def url() -> str:
    return SQS_URL


@pytest.fixture
def transport_options() -> dict[str, dict[str, Any]]:
    return {"sqs": dict(SQS_OPTIONS), "dynamodb": table_options()}


class TestSQSBroker(BrokerConformance):
    redelivery_timeout: ClassVar[float | None] = 4.0
    eta_tolerance: ClassVar[float] = SQS_ETA_TOLERANCE

    @pytest.fixture
    def broker_url(self, url: str) -> str:
        return url  # never the suite's embedded fallback: the URL must resolve to SQSBroker

    @pytest.fixture
    def backend_url(self) -> str:
        return DYNAMODB_URL

    @pytest.fixture
    def broker_oracle(self) -> BrokerOracle:
        return SQSOracle()


class TestDynamoDBBackend(BackendConformance):
    @pytest.fixture
    def url(self) -> str:
        return DYNAMODB_URL

    @pytest.fixture
    def backend_oracle(self) -> BackendOracle:
        return DynamoDBOracle(table_options()["task_states_table"])


class TestDynamoDBLock(LockConformance):
    @pytest.fixture
    def url(self) -> str:
        return DYNAMODB_URL


class TestSQSWorkflow(WorkflowConformance):
    """A worker process on Go's URL forms: SQS broker, DynamoDB backend."""

    eta_tolerance: ClassVar[float] = SQS_ETA_TOLERANCE

    @pytest.fixture
    def broker_url(self) -> str:
        return GO_SQS_URL

    @pytest.fixture
    def backend_url(self) -> str:
        return GO_DYNAMODB_URL

    @pytest.fixture
    def lock_url(self) -> str:
        return GO_DYNAMODB_URL


class TestSQSPools(PoolConformance):
    """Worker pools, time limits, recycling and crash isolation (machinery.testing.pools) with
    the SQS broker: real worker processes, children and signals."""

    @pytest.fixture
    def broker_url(self, url: str) -> str:
        return url
