"""The fault suite (``machinery.testing.faults``) on Pub/Sub: SIGKILLed workers and the fuzz on
the shared emulator (``PUBSUB_EMULATOR_HOST``), the restart scenario on a private emulator on a
free port. Pub/Sub has no result backend: results go to an embedded ``sqlite://`` file.

The emulator keeps everything in memory: a restart loses topics, subscriptions and messages
(``persistent = False``); the scenario checks the producer's error during the outage and that the
worker carries on once the emulator is back (``create_missing`` declares them again).

Run by ``nox -s faults`` (the file name keeps it out of the plugin's ``tests`` session).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import PROJECT
from test_conformance import PubSubOracle

from machinery.testing import BrokerOracle
from machinery.testing.faults import FaultConformance, RestartableServer

EMULATOR = os.environ.get(
    "PUBSUB_EMULATOR", "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
)


class PrivateEmulator(RestartableServer):
    """A Pub/Sub emulator of our own on a free port (in memory: nothing survives a restart)."""

    description = "private emulator, in memory"
    persistent = False

    def __init__(self, workdir: Path, subscription: str) -> None:
        self.log = workdir / "pubsub.log"
        self.subscription = subscription
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def broker_url(self) -> str:
        return f"gcppubsub://{PROJECT}/{self.subscription}"

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(
            [EMULATOR, "--host=127.0.0.1", f"--port={self.port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"private Pub/Sub emulator did not start: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            self.proc = None


@pytest.fixture
def backend_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def transport_options() -> Mapping[str, Mapping[str, Any]]:
    """The emulator's minimum ack deadline (10 s); topics that retain messages, for the oracle."""
    return {"gcp_pubsub": {"create_missing": True, "ack_deadline": 10, "topic_retention": 600}}


class TestPubSubFaults(FaultConformance):
    fault_label = "gcp_pubsub (shared emulator, 10 s ack deadline)"
    redelivery_timeout: ClassVar[float | None] = 15.0
    #: each count takes a snapshot and a pull round
    oracle_interval: ClassVar[float] = 2.0

    @pytest.fixture
    def broker_oracle(self, raw_clients: tuple[Any, Any], url: str, machinery_queue: str) -> BrokerOracle:
        return PubSubOracle(raw_clients, url, machinery_queue)

    @pytest.fixture
    def restartable_server(
        self, tmp_path: Path, subscription_name: str, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[RestartableServer]:
        if not os.access(EMULATOR, os.X_OK):
            if os.environ.get("CI"):
                pytest.fail(f"the Pub/Sub emulator is not installed at {EMULATOR}")
            pytest.skip(f"the Pub/Sub emulator is not installed at {EMULATOR}")
        srv = PrivateEmulator(tmp_path, subscription_name)
        srv.start()
        # the producer here and the worker processes started after this talk to the private one
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", srv.host)
        yield srv
        srv.stop(signal.SIGKILL)
