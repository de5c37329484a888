"""The conformance suite against the real Redis (``REDIS_URL``, default 127.0.0.1:6379)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import redis

from machinery.testing import (
    BackendConformance,
    BackendOracle,
    BrokerConformance,
    BrokerOracle,
    ControlConformance,
    LockConformance,
    WorkflowConformance,
)

#: A short visibility timeout, so that the SIGKILL redelivery tests do not wait long.
VISIBILITY_TIMEOUT = 2


class RawRedisOracle(BrokerOracle, BackendOracle):
    """Reads the queue lists, processing lists and state keys with plain redis-py."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def message_count(self, queue: str) -> int:
        count = int(self.client.llen(queue))
        for key in self.client.scan_iter(match=f"{{{queue}}}:processing:*", count=1000):
            count += int(self.client.llen(key))
        return count

    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        raw = self.client.get(task_uuid)
        return None if raw is None else json.loads(raw)

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def transport_options(machinery_queue: str) -> Mapping[str, Mapping[str, Any]]:
    """A delayed set of the test's own (Go's ``delayed_tasks`` is shared by every queue) and a
    short visibility timeout."""
    return {"redis": {"delayed_tasks_key": f"{machinery_queue}_delayed", "visibility_timeout": VISIBILITY_TIMEOUT}}


@pytest.fixture
def oracle(url: str, machinery_queue: str) -> Iterator[RawRedisOracle]:
    o = RawRedisOracle(url)
    yield o
    o.client.delete(f"{machinery_queue}_delayed", f"{{{machinery_queue}}}:dead")
    o.close()


class TestRedisBroker(BrokerConformance):
    # visibility timeout + one reaper period (1 s at this timeout) + slack
    redelivery_timeout = VISIBILITY_TIMEOUT + 3.0

    @pytest.fixture
    def broker_oracle(self, oracle: RawRedisOracle) -> BrokerOracle:
        return oracle


class TestRedisBackend(BackendConformance):
    @pytest.fixture
    def backend_oracle(self, oracle: RawRedisOracle) -> BackendOracle:
        return oracle


class TestRedisLock(LockConformance):
    pass


class TestRedisWorkflow(WorkflowConformance):
    pass


class TestRedisControl(ControlConformance):
    pass
