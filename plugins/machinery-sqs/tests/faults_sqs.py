"""The fault suite (``machinery.testing.faults``) on SQS: SIGKILLed workers and the fuzz on the
shared moto server (``AWS_ENDPOINT_URL``), the restart scenario on a private ``moto_server`` on a
free port. Results go to an embedded ``sqlite://`` file (the fuzz stores thousands of states).

moto keeps everything in memory: a restart loses every queue and message, so the restart
scenario measures that loss (``persistent = False``) and checks the rest: a clear error for the
producer during the outage, and a worker that carries on once the server is back.

Run by ``nox -s faults`` (the file name keeps it out of the plugin's ``tests`` session).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import ACCOUNT, endpoint_ok
from test_conformance import SQS_URL, SQSOracle

from machinery.testing import BrokerOracle
from machinery.testing.faults import FaultConformance, RestartableServer

#: A short visibility timeout: a SIGKILLed worker's messages come back after it.
VISIBILITY_TIMEOUT = 4


def _moto_server() -> str | None:
    for candidate in (os.environ.get("MOTO_SERVER", ""), "/tmp/ci-services/moto-venv/bin/moto_server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("moto_server")


class PrivateMoto(RestartableServer):
    """A ``moto_server`` of our own on a free port (in memory: nothing survives a restart)."""

    description = "private moto_server, in memory"
    persistent = False

    def __init__(self, exe: str, workdir: Path) -> None:
        self.exe = exe
        self.log = workdir / "moto.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(
            [self.exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"private moto_server did not start: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
            self.proc = None


@pytest.fixture(autouse=True)
def _server_up() -> None:
    endpoint_ok()


@pytest.fixture
def url() -> str:
    return SQS_URL


@pytest.fixture
def backend_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def transport_options() -> Mapping[str, Mapping[str, Any]]:
    return {"sqs": {"visibility_timeout": VISIBILITY_TIMEOUT}}


class TestSQSFaults(FaultConformance):
    fault_label = "sqs (shared moto, 4 s visibility timeout)"
    redelivery_timeout: ClassVar[float | None] = VISIBILITY_TIMEOUT + 2.0
    #: moto serves ~100 requests/s on this machine: fewer, slower tasks keep the run short.
    sigkill_tasks: ClassVar[int] = 300
    oracle_interval: ClassVar[float] = 1.0
    #: moto handles 15-20 messages a second here (each one a receive and a delete over HTTP to a
    #: Python server on the same 2 cores, shared with the other tests): 10,000 bodies would take
    #: ten minutes, so SQS gets 1,200 (every family of the generator 100 times).
    fuzz_bodies: ClassVar[int] = 1_200
    fuzz_timeout: ClassVar[float] = 150.0

    @pytest.fixture
    def broker_url(self, url: str) -> str:
        return url

    @pytest.fixture
    def broker_oracle(self) -> BrokerOracle:
        return SQSOracle()

    @pytest.fixture
    def restartable_server(self, tmp_path: Path) -> Iterator[RestartableServer]:
        exe = _moto_server()
        if exe is None:
            if os.environ.get("CI"):
                pytest.fail("moto_server not found (scripts/start-services installs it)")
            pytest.skip("moto_server not found")
        srv = PrivateMoto(exe, tmp_path)
        srv.start()
        yield srv
        srv.stop(signal.SIGKILL)
