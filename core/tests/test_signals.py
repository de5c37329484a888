"""SIGINT/SIGTERM: once = warm shutdown (in-flight tasks finish), twice = exit now."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from machinery import Server, Config, Signature
    d = Path(sys.argv[1])
    srv = Server(Config(broker="memory://sig", result_backend="memory://sig"))

    @srv.task("slow")
    def slow() -> None:
        (d / "started").write_text("1")
        time.sleep(1.5)
        (d / "done").write_text("1")

    srv.send_task(Signature("slow"))
    srv.send_task(Signature("slow"))
    srv.new_worker("sig", 1).launch()
    (d / "exited").write_text("1")
    """
)


def _start(tmp_path: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not (tmp_path / "started").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"worker did not start: {proc.stderr.read() if proc.stderr else ''!r}")
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_one_signal_is_a_warm_shutdown(tmp_path: Path, signum: int) -> None:
    proc = _start(tmp_path)
    os.kill(proc.pid, signum)
    assert proc.wait(timeout=20) == 0
    assert (tmp_path / "done").exists(), "the in-flight task must finish"
    assert (tmp_path / "exited").exists(), "launch() must return"
    assert proc.stderr is not None and b"warm shutdown" in proc.stderr.read()


def test_two_signals_exit_now(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    assert not (tmp_path / "done").exists(), "the in-flight task is abandoned (left unacknowledged)"
