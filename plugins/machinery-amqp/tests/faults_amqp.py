"""The fault suite (``machinery.testing.faults``) on RabbitMQ: SIGKILLed workers and the fuzz on
the shared server (``AMQP_URL``), the restart scenario on a private node of its own (own node
name, ports and data directory: the shared node is never stopped). Results go to an embedded
``sqlite://`` file, so thousands of fuzz states do not become thousands of result queues.

Run by ``nox -s faults`` (the file name keeps it out of the plugin's ``tests`` session).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import RawBrokerOracle
from test_amqp_restart import PrivateRabbit

from machinery.testing import BrokerOracle
from machinery.testing.faults import FaultConformance, RestartableServer


class PrivateNode(RestartableServer):
    """A private RabbitMQ node; messages are persistent on durable queues (Go's defaults)."""

    description = "private node, durable queues, persistent messages"
    persistent = True

    def __init__(self) -> None:
        self.node = PrivateRabbit()

    @property
    def broker_url(self) -> str:
        return self.node.url

    def start(self) -> None:
        self.node.start()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if sig == signal.SIGTERM or self.node.proc is None:
            self.node.stop()  # rabbitmqctl stop: a clean shutdown
            return
        # a crash: SIGKILL this node's Erlang VM (its pid asked from the node itself), then the
        # wrapper's process group
        out = subprocess.run(
            ["rabbitmqctl", "-n", self.node.node, "eval", "list_to_integer(os:getpid())."],
            env=self.node.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
        if out.isdigit():
            os.kill(int(out), signal.SIGKILL)
        os.killpg(self.node.proc.pid, signal.SIGKILL)
        self.node.proc.wait(20)
        self.node.proc = None

    def destroy(self) -> None:
        self.node.destroy()


@pytest.fixture
def backend_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def transport_options(machinery_queue: str) -> Mapping[str, Mapping[str, Any]]:
    return {"amqp": {"binding_key": machinery_queue, "reconnect_max_delay": 1.0, "confirm_timeout": 5}}


class TestAMQPFaults(FaultConformance):
    fault_label = "amqp (shared RabbitMQ)"
    # a dead consumer's connection closes with it: RabbitMQ requeues at once
    redelivery_timeout: ClassVar[float | None] = 5.0

    @pytest.fixture
    def broker_oracle(self) -> BrokerOracle:
        return RawBrokerOracle()

    @pytest.fixture
    def restartable_server(self) -> Iterator[RestartableServer]:
        if not shutil.which("rabbitmq-server") or os.geteuid() != 0:
            if os.environ.get("CI"):
                pytest.fail("the restart scenario needs rabbitmq-server and root (as scripts/start-services)")
            pytest.skip("needs rabbitmq-server and root to start a private node")
        srv = PrivateNode()
        try:
            srv.start()
            yield srv
        finally:
            srv.destroy()
