"""The fault suite (``machinery.testing.faults``) on Redis: SIGKILLed workers and the fuzz on the
shared server (``REDIS_URL``), the restart scenario on a private redis-server with
``--appendonly yes --appendfsync always`` (stopped with SIGTERM, then SIGKILL, and restarted).

Run by ``nox -s faults`` (the file name keeps it out of the plugin's ``tests`` session).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import PrivateRedis
from test_conformance import RawRedisOracle

from machinery.testing import BrokerOracle
from machinery.testing.faults import FaultConformance, RestartableServer

#: A short visibility timeout: a SIGKILLed worker's messages come back after it (plus the reaper).
VISIBILITY_TIMEOUT = 2


class AOFRedis(RestartableServer):
    """A private redis-server with an append-only file fsynced on every write."""

    description = "private server, AOF appendfsync always"
    persistent = True

    def __init__(self, workdir: Path) -> None:
        self.server = PrivateRedis(workdir)

    @property
    def broker_url(self) -> str:
        return self.server.url

    @property
    def backend_url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc = self.server.proc
        if proc is not None:
            proc.send_signal(sig)
            proc.wait(30)
            self.server.proc = None


@pytest.fixture
def transport_options(machinery_queue: str) -> Mapping[str, Mapping[str, Any]]:
    return {"redis": {"delayed_tasks_key": f"{machinery_queue}_delayed", "visibility_timeout": VISIBILITY_TIMEOUT}}


class TestRedisFaults(FaultConformance):
    fault_label = "redis (shared server, 2 s visibility timeout)"
    # visibility timeout + one reaper period + slack
    redelivery_timeout: ClassVar[float | None] = VISIBILITY_TIMEOUT + 3.0

    @pytest.fixture
    def broker_oracle(self, url: str, machinery_queue: str) -> Iterator[BrokerOracle]:
        o = RawRedisOracle(url)
        yield o
        o.client.delete(f"{machinery_queue}_delayed", f"{{{machinery_queue}}}:dead")
        o.close()

    @pytest.fixture
    def restartable_server(self, tmp_path: Path) -> Iterator[RestartableServer]:
        srv = AOFRedis(tmp_path)
        srv.start()
        yield srv
        srv.stop(signal.SIGKILL)
