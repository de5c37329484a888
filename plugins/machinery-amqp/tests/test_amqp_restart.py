"""A real RabbitMQ restart, on a private node (own node name and ports), never the shared one.

Starting a node takes about 10 s, so the test is marked slow. It needs ``rabbitmq-server`` and
root (the Debian wrapper switches to the ``rabbitmq`` user), as ``scripts/start-services`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery.config import Config
from machinery.errors import BrokerConnectionError
from machinery.interfaces import Delivery
from machinery.signature import Signature, encode_signature, new_uuid
from machinery_amqp.broker import AMQPBroker

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


class PrivateRabbit:
    """A RabbitMQ node of its own in a temporary directory, started and stopped by the test."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mt-rabbit-", dir="/tmp"))
        self.dir.chmod(0o777)  # the node runs as the rabbitmq user
        self.port = _free_port()
        self.node = f"mtamqp{self.port}@localhost"
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        for p in self.dir.iterdir():
            p.chmod(0o666)
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(_free_port()),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.dir / "server.out", "ab")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(
            ["rabbitmq-server"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private RabbitMQ did not start; see {self.dir / 'server.out'}")
            time.sleep(0.2)

    def stop(self) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.node, "stop"], env=self.env, capture_output=True, timeout=60, check=False
        )
        if self.proc is not None:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_rabbit() -> Iterator[PrivateRabbit]:
    if not shutil.which("rabbitmq-server") or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the restart test needs rabbitmq-server and root (as scripts/start-services)")
        pytest.skip("needs rabbitmq-server and root to start a private node")
    node = PrivateRabbit()
    try:
        node.start()
        yield node
    finally:
        node.destroy()


def test_restart_keeps_messages_and_reconnects(private_rabbit: PrivateRabbit, caplog: pytest.LogCaptureFixture) -> None:
    """RabbitMQ restarts while a task is in flight and another waits: the consumer reconnects with
    back-off, both come back (the in-flight one redelivered), publishing fails clearly while the
    server is down and works again after."""
    queue = "mt_restart"
    cfg = Config(
        broker=private_rabbit.url,
        default_queue=queue,
        no_unix_signals=True,
        # basic.qos 1 (not the default 4 x prefetch): the second message waits in RabbitMQ while
        # the first is in flight
        transport_options={
            "amqp": {"binding_key": queue, "reconnect_max_delay": 1.0, "confirm_timeout": 5, "prefetch_count": 1}
        },
    )
    broker = AMQPBroker(private_rabbit.url, cfg)

    def publish(n: int) -> str:
        sig = Signature("add", [n], uuid=new_uuid())
        broker.adjust_routing_key(sig)
        broker.publish(encode_signature(sig), sig)
        return sig.uuid

    stop = threading.Event()
    seen: list[Delivery] = []
    try:
        first, second = publish(1), publish(2)
        it = broker.consume(queue, prefetch=1, stop=stop)

        def run() -> None:
            for d in it:
                seen.append(d)
                if len(seen) > 1:
                    broker.ack(d)  # the first delivery stays "in flight" across the restart

        t = threading.Thread(target=run, daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [json.loads(d.body)["UUID"] for d in seen] == [first]

        private_rabbit.stop()
        with pytest.raises(BrokerConnectionError):
            publish(3)
        private_rabbit.start()
        third = publish(4)

        want = {first, second, third}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = [json.loads(d.body)["UUID"] for d in seen[1:]]
            if want <= set(got):
                break
            time.sleep(0.1)
        got = [json.loads(d.body)["UUID"] for d in seen[1:]]
        assert want <= set(got), f"after the restart got {got}, want {want}"
        assert "reconnecting" in caplog.text
    finally:
        stop.set()
        broker.close()
