"""Tasks of the dashboard's tests, run by a real worker process (``machinery worker --app dashapp``)."""

from __future__ import annotations

import os
import time

from machinery import Config, Server

server = Server(Config.load(None))


@server.task("add")
def add(a: int, b: int) -> int:
    """a + b."""
    return a + b


@server.task("slow_add")
def slow_add(a: int, b: int) -> int:
    """a + b, after a second (so a graph is seen while it runs)."""
    time.sleep(1.0)
    return a + b


@server.task("explode")
def explode(reason: str) -> int:
    """Always fails."""
    raise ValueError(f"member exploded: {reason}")


@server.task("total")
def total(*values: int) -> int:
    """The chord callback."""
    return sum(values)


@server.task("touch")
def touch(path: str) -> str:
    """Create ``path`` (a test checks a revoked task never did)."""
    with open(path, "w") as f:
        f.write("ran")
    return path


@server.task("charge")
def charge(flag: str) -> str:
    """Fails until ``flag`` exists (a dead letter that replays once it can succeed)."""
    if not os.path.exists(flag):
        raise RuntimeError("payment gateway down")
    return "charged"


@server.task("secret_login")
def secret_login(password: str) -> str:
    """Its arguments are hidden by the tests' dashboard (``--hide-args 'secret_*'``)."""
    return "ok"
