"""Fixtures for the NATS broker tests: the JetStream server behind ``NATS_URL`` (default
``nats://127.0.0.1:4222``), a stream and subject prefix of this test session's own, deleted at
the end."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
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


class PrivateNats:
    """A ``nats-server -js`` of our own on a free port, storing under ``workdir``; safe to stop
    (with any signal) and start again."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("nats-server")
        if exe is None and Path("/usr/sbin/nats-server").exists():
            exe = "/usr/sbin/nats-server"
        if exe is None:
            if os.environ.get("CI"):
                pytest.fail("nats-server is not installed; CI must run the restart tests", pytrace=False)
            pytest.skip("nats-server is not installed")
        self.exe, self.dir = exe, workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [self.exe, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.dir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"private nats-server on port {self.port} did not start")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
            self.proc = None
