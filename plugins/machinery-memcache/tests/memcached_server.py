"""A private memcached process for tests that stop or restart the server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Memcached:
    """A private memcached on a free port, which a test may stop and restart.

    :param extra: extra command-line options (``-I 2m``...).
    """

    def __init__(self, *extra: str) -> None:
        exe = shutil.which("memcached")
        if exe is None:
            if os.environ.get("CI"):
                pytest.fail("memcached is not installed (scripts/start-services installs it)", pytrace=False)
            pytest.skip("memcached is not installed")
        self.port = _free_port()
        self.argv = [exe, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "16", *extra]
        if os.geteuid() == 0:
            self.argv += ["-u", "memcache"]  # memcached refuses to run as root without -u
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        """``memcache://127.0.0.1:<port>``."""
        return f"memcache://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"memcached on port {self.port} did not start: {err}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop it (everything it held is lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port, empty."""
        self.stop()
        self.start()
