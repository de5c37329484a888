"""Periodic tasks across processes on each lock plugin: exactly one task per tick.

Three scheduler processes, each with its own ``Server`` (so its own lock owner), run a
``@every 1s`` entry for 10 s. The test then consumes every message from the queue and checks,
by the tick header each carries, that every tick was delivered exactly once, with no gap, and
that the schedulers' "sent" log lines name exactly the delivered task UUIDs.

Locks under test: Redis (``machinery-redis``) and DynamoDB (``machinery-sqs``, on moto). The
embedded ``sqlite://`` lock has the same test in ``core/tests/test_schedule_multiprocess.py``;
both use :func:`machinery.testing.check_periodic_ticks_once`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from machinery import Config, Server
from machinery.testing import check_periodic_ticks_once, require_server


@dataclass
class Target:
    broker: str
    backend: str
    lock: str


@pytest.fixture
def redis_target() -> Target:
    pytest.importorskip("machinery_redis", reason="machinery-redis is not installed")
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    require_server(url, port=6379)
    return Target(url, url, url)


@pytest.fixture
def dynamodb_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    pytest.importorskip("machinery_sqs", reason="machinery-sqs is not installed")
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    require_server(endpoint, port=5000)
    for var, default in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(var, os.environ.get(var, default))
    table = f"periodic_locks_{uuid.uuid4().hex[:8]}"
    lock = f"dynamodb://us-east-1?create_tables=true&lock_table={table}&endpoint_url={endpoint}"
    local = f"sqlite:///{tmp_path / 'machinery.db'}"
    target = Target(local, local, lock)
    # create the lock table once, before three processes race to
    server = Server(Config(broker=local, result_backend=local, lock=lock))
    assert server.lock.acquire("warm-up", timedelta(seconds=1))
    server.close()
    yield target
    import boto3

    boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint).delete_table(TableName=table)


@pytest.mark.slow
def test_three_schedulers_on_redis_send_each_tick_once(tmp_path: Path, redis_target: Target) -> None:
    t = redis_target
    check_periodic_ticks_once(tmp_path, broker=t.broker, backend=t.backend, lock=t.lock, seconds=10.0, processes=3)


@pytest.mark.slow
def test_three_schedulers_on_a_dynamodb_lock_send_each_tick_once(tmp_path: Path, dynamodb_target: Target) -> None:
    t = dynamodb_target
    check_periodic_ticks_once(tmp_path, broker=t.broker, backend=t.backend, lock=t.lock, seconds=10.0, processes=3)
