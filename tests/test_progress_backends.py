"""Progress through every result backend in the tree: a report stored by one server is read by
another (its own connections), with the ``Progress`` key Go ignores; the final state drops it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from machinery import Config, Server, Signature, TaskContext
from machinery.testing import require_server

RUN = uuid.uuid4().hex[:8]


def _redis() -> tuple[str, dict[str, Any]]:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    require_server(url)
    return url, {}


def _memcache() -> tuple[str, dict[str, Any]]:
    url = os.environ.get("MEMCACHE_URL", "memcache://127.0.0.1:11211")
    require_server(url)
    return url, {}


def _mongo() -> tuple[str, dict[str, Any]]:
    url = os.environ.get("MONGODB_URL", "mongodb://127.0.0.1:27017/")
    require_server(url)
    return url, {"mongodb": {"database": f"machinery_progress_{RUN}"}}


def _amqp() -> tuple[str, dict[str, Any]]:
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    require_server(url)
    return url, {}


def _dynamodb() -> tuple[str, dict[str, Any]]:
    os.environ.setdefault("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    require_server(os.environ["AWS_ENDPOINT_URL"], "127.0.0.1", 5000)
    tables = {
        "task_states_table": f"mtp{RUN}_task_states",
        "group_metas_table": f"mtp{RUN}_group_metas",
        "lock_table": f"mtp{RUN}_locks",
        "create_tables": True,
    }
    return "dynamodb://", {"dynamodb": tables}


BACKENDS = {"redis": _redis, "memcache": _memcache, "mongo": _mongo, "amqp": _amqp, "dynamodb": _dynamodb}


@pytest.fixture(params=sorted(BACKENDS))
def servers(request: pytest.FixtureRequest) -> Iterator[tuple[Server, Server]]:
    url, options = BACKENDS[request.param]()
    config = Config(broker="memory://progress-backends", result_backend=url, transport_options=options)
    writer, reader = Server(config), Server(config)
    yield writer, reader
    writer.close()
    reader.close()
    if request.param == "mongo":
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
        client.drop_database(f"machinery_progress_{RUN}")
        client.close()
    if request.param == "dynamodb":
        import boto3

        ddb = boto3.client("dynamodb")
        for t in options["dynamodb"].values():
            if isinstance(t, str):
                try:
                    ddb.delete_table(TableName=t)
                except ddb.exceptions.ResourceNotFoundException:
                    pass


def test_progress_round_trips_through_the_backend(servers: tuple[Server, Server]) -> None:
    writer, reader = servers
    sig = Signature("resize", uuid=f"task_progress_{uuid.uuid4().hex}")
    writer.backend.set_state_pending(sig)
    assert reader.async_result(sig.uuid).progress is None
    ctx = TaskContext(sig, writer)
    ctx.report_progress(1, 4, info="first")
    ctx.report_progress(2.5, 4, info={"item": "b", "sizes": [1, 2]})
    seen = reader.async_result(sig.uuid)
    p = seen.progress
    assert p is not None and (p.done, p.total, p.info) == (2.5, 4, {"item": "b", "sizes": [1, 2]})
    assert p.updated_at is not None
    assert seen.status == "STARTED"  # (AMQP, as Go, keeps TaskName with PENDING only)
    writer.backend.set_state_success(sig, [])
    done = reader.async_result(sig.uuid)
    assert done.get(timeout=5) is None and done.progress is None
