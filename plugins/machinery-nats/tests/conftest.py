"""Fixtures for the NATS broker tests: the JetStream server behind ``NATS_URL`` (default
``nats://127.0.0.1:4222``), a stream and subject prefix of this test session's own, deleted at
the end."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import nats
import pytest

from machinery.testing import BrokerOracle, require_server

pytest_plugins = ["machinery.testing.plugin"]

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
SESSION = uuid.uuid4().hex[:10]
STREAM = f"MT_{SESSION}"
PREFIX = f"mt{SESSION}"
#: A short ack wait, so the redelivery tests are quick.
ACK_WAIT = 3.0


def raw(coro_fn: Any) -> Any:
    """Run ``coro_fn(js)`` on a raw nats-py connection of its own (bypassing the plugin)."""

    async def main() -> Any:
        nc = await nats.connect(NATS_URL)
        try:
            return await coro_fn(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


class NatsOracle(BrokerOracle):
    """Messages of a queue's subject still in the (work-queue) stream: ready or delivered and
    not yet acknowledged."""

    def message_count(self, queue: str) -> int:
        subject = f"{PREFIX}.q.{queue}"

        async def count(js: Any) -> int:
            try:
                info = await js.stream_info(STREAM, subjects_filter=subject)
            except nats.js.errors.NotFoundError:
                return 0
            return int((info.state.subjects or {}).get(subject, 0))

        return int(raw(count))


@pytest.fixture
def url() -> str:
    require_server(NATS_URL, port=urlsplit(NATS_URL).port or 4222)
    return NATS_URL


@pytest.fixture
def transport_options() -> Mapping[str, Mapping[str, Any]]:
    return {"nats": {"stream": STREAM, "subject_prefix": PREFIX, "ack_wait": ACK_WAIT}}


@pytest.fixture
def broker_oracle() -> BrokerOracle:
    return NatsOracle()


@pytest.fixture(scope="session", autouse=True)
def _drop_session_stream() -> Iterator[None]:
    yield

    async def drop(js: Any) -> None:
        try:
            await js.delete_stream(STREAM)
        except nats.js.errors.NotFoundError:
            pass

    try:
        raw(drop)
    except Exception:
        pass
