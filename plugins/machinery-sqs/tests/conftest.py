"""Tests run against a real SQS + DynamoDB server (moto_server on 127.0.0.1:5000 in CI), over HTTP
with the unmodified boto3. ``AWS_ENDPOINT_URL`` points boto3 at it; without it the tests default
to the local server with dummy credentials (never to AWS).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest_plugins = ["machinery.testing.plugin"]

if not os.environ.get("AWS_ENDPOINT_URL"):
    os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:5000"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
ACCOUNT = os.environ.get("SQS_TEST_ACCOUNT", "123456789012")  # moto's fixed account id
#: Names of everything this run creates start with this, so it can be deleted at the end.
RUN = f"mts{uuid.uuid4().hex[:6]}"


def endpoint_ok() -> None:
    """Fail (CI) or skip (locally) when the SQS/DynamoDB server is not reachable."""
    from machinery.testing import require_server

    parts = urlsplit(ENDPOINT)
    require_server(ENDPOINT, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))


def raw_client(service: str) -> Any:
    """A plain boto3 client on the test server (for oracles and checks that bypass the plugin)."""
    import boto3

    return boto3.client(service)


def table_options(prefix: str = RUN) -> dict[str, Any]:
    """A ``dynamodb:`` section with tables private to this run, created on first use."""
    return {
        "task_states_table": f"{prefix}_task_states",
        "group_metas_table": f"{prefix}_group_metas",
        "lock_table": f"{prefix}_locks",
        "create_tables": True,
    }


@pytest.fixture(scope="session", autouse=True)
def _cleanup_aws() -> Iterator[None]:
    """Delete the queues and tables this test run created."""
    try:
        sqs = raw_client("sqs")
        before = set(sqs.list_queues(MaxResults=1000).get("QueueUrls", []))
    except Exception:
        yield
        return
    yield
    try:
        for url in set(sqs.list_queues(MaxResults=1000).get("QueueUrls", [])) - before:
            sqs.delete_queue(QueueUrl=url)
        db = raw_client("dynamodb")
        for page in db.get_paginator("list_tables").paginate():
            for name in page.get("TableNames", []):
                if name.startswith(RUN):
                    db.delete_table(TableName=name)
    except Exception as exc:
        print(f"cleanup of {RUN} queues/tables failed: {exc}")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``offline`` marker (tests that need no server)."""
    config.addinivalue_line("markers", "offline: needs no SQS/DynamoDB server")
