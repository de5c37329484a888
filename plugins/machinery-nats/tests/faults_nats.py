"""The fault suite (``machinery.testing.faults``) on NATS JetStream: SIGKILLed workers and the
fuzz on the shared server (``NATS_URL``), the restart scenario on a private ``nats-server -js``
storing its stream in files (stopped with SIGTERM, then SIGKILL, and restarted).

Run by ``nox -s faults`` (the file name keeps it out of the plugin's ``tests`` session).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import ACK_WAIT, PrivateNats

from machinery.testing.faults import FaultConformance, RestartableServer


class FileNats(RestartableServer):
    """A private nats-server whose JetStream stream is stored in files."""

    description = "private server, JetStream file storage"
    persistent = True

    def __init__(self, workdir: Path) -> None:
        self.server = PrivateNats(workdir)

    @property
    def broker_url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.server.stop(sig)


class TestNatsFaults(FaultConformance):
    fault_label = f"nats (shared server, {ACK_WAIT:g} s ack wait)"
    redelivery_timeout: ClassVar[float | None] = ACK_WAIT + 1.0

    @pytest.fixture
    def restartable_server(self, tmp_path: Path) -> Iterator[RestartableServer]:
        srv = FileNats(tmp_path)
        srv.start()
        yield srv
        srv.stop(signal.SIGKILL)
