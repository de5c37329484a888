"""A private SecantusDB (MongoDB wire protocol) process for tests that stop or restart the server.

It runs from the SecantusDB environment that ``scripts/start-services`` builds
(``$SVC_DIR/secantus-venv``, default ``/tmp/ci-services``), with its data on disk so that what
was stored survives a restart, and a 1 s TTL sweep.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

LAUNCHER = """
import signal, sys
from secantus.server import SecantusDBServer
server = SecantusDBServer(host="127.0.0.1", port=int(sys.argv[1]), storage_path=sys.argv[2],
                          cache_size="64M", ttl_sweep_seconds=1.0)
def stop(*_):
    server.stop(); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
server.start(); server.wait()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Secantus:
    """A SecantusDB server of one test, on a free port.

    :param data_dir: where it keeps its data (kept across :meth:`restart`).
    """

    def __init__(self, data_dir: Path) -> None:
        python = Path(os.environ.get("SVC_DIR", "/tmp/ci-services")) / "secantus-venv" / "bin" / "python"
        if not python.exists():
            if os.environ.get("CI"):
                pytest.fail(f"no SecantusDB environment at {python} (scripts/start-services builds it)", pytrace=False)
            pytest.skip(f"no SecantusDB environment at {python}")
        self.port = _free_port()
        self.data_dir = data_dir
        launcher = data_dir.parent / "secantus_launch.py"
        launcher.write_text(LAUNCHER, encoding="utf-8")
        self.argv = [str(python), str(launcher), str(self.port), str(data_dir)]
        self.log = data_dir.parent / "secantus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        """``mongodb://127.0.0.1:<port>/``."""
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"SecantusDB did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (SIGTERM; it takes a few seconds to close its storage)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()
