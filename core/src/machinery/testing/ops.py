"""End-to-end checks of progress, ``machinery watch`` and ``machinery dead`` with real worker
processes, for any broker/backend pair: the core runs them on ``sqlite://``, each plugin on
its own server (``plugins/machinery-redis/tests/test_ops_redis.py``).

Each check starts ``python -m machinery worker --app opsapp`` (the app below, written to the
work directory) and drives it from the test process and from ``python -m machinery`` commands,
so every observation crosses a process boundary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from machinery.config import Config
from machinery.progress import Progress
from machinery.results import AsyncResult
from machinery.server import Server
from machinery.signature import Signature
from machinery.workflow import Group

__all__ = ["OPS_APP", "OpsEnv", "check_dead_letter_cli", "check_progress_across_processes"]

T = TypeVar("T")

#: The worker's app: tasks that report progress step by step, each step waiting for a file the
#: test creates (so "mid-task" is a state the test controls, not a race), and a task that fails
#: until a file exists (with ``stop_task_deletion_on_error`` it becomes a dead letter).
OPS_APP = '''
import asyncio, os, time
from machinery import Config, Server, TaskContext

server = Server(Config(broker=os.environ["OPS_BROKER"], result_backend=os.environ["OPS_BACKEND"],
                       default_queue=os.environ["OPS_QUEUE"], transport_options={}))

def _gate(path: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("gate never opened: " + path)
        time.sleep(0.01)

@server.task("steps")
def steps(ctx: TaskContext, n: int, gate: str) -> int:
    for i in range(1, n + 1):
        ctx.report_progress(i, n, info="step %d" % i)
        _gate("%s.%d" % (gate, i))
    return n

@server.task("asteps")
async def asteps(ctx: TaskContext, n: int, gate: str) -> int:
    for i in range(1, n + 1):
        await ctx.areport_progress(i, n, info={"step": i})
        while not os.path.exists("%s.%d" % (gate, i)):
            await asyncio.sleep(0.01)
    return n

@server.task("boom")
def boom() -> None:
    raise RuntimeError("boom")

@server.task("until_ok")
def until_ok(path: str) -> str:
    if not os.path.exists(path + ".ok"):
        raise RuntimeError("not yet")
    with open(path, "a") as fh:
        fh.write("ran\\n")
    return "ran"
'''


def wait_until(predicate: Callable[[], T | None], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


class OpsEnv:
    """The app, environment and helpers of one check.

    :param workdir: a fresh directory (the app module, gates, logs).
    :param broker: broker URL.
    :param backend: result backend URL.
    :param queue: a queue no other test uses.
    """

    def __init__(self, workdir: Path, broker: str, backend: str, queue: str) -> None:
        self.workdir = workdir
        (workdir / "opsapp.py").write_text(OPS_APP)
        env = {k: v for k, v in os.environ.items() if k not in ("BROKER", "RESULT_BACKEND", "DEFAULT_QUEUE")}
        env.update(
            OPS_BROKER=broker,
            OPS_BACKEND=backend,
            OPS_QUEUE=queue,
            BROKER=broker,
            RESULT_BACKEND=backend,
            DEFAULT_QUEUE=queue,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(p for p in (str(workdir), os.environ.get("PYTHONPATH", "")) if p),
        )
        self.env = env
        self.queue = queue
        self.server = Server(Config(broker=broker, result_backend=backend, default_queue=queue))

    def cli(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:  # noqa: A002
        """``python -m machinery ARGS`` with the check's configuration."""
        return subprocess.run(
            [sys.executable, "-m", "machinery", *args],
            capture_output=True,
            text=True,
            env=self.env,
            input=input if input is not None else "",
            timeout=timeout,
        )

    def popen_cli(self, *args: str) -> subprocess.Popen[str]:
        """``python -m machinery ARGS`` running in the background (stdout and stderr piped)."""
        return subprocess.Popen(
            [sys.executable, "-m", "machinery", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )

    @contextmanager
    def worker(self, concurrency: int = 2) -> Iterator[subprocess.Popen[bytes]]:
        """A ``machinery worker --app opsapp`` process, ready when entered, stopped (SIGTERM,
        then SIGKILL after 15 s) on exit."""
        log_path = self.workdir / f"worker-{time.monotonic_ns()}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "machinery", "worker", "--app", "opsapp", "-c", str(concurrency)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        try:
            wait_until(
                lambda: " ready: queue=" in log_path.read_text(errors="replace") or proc.poll() is not None,
                60,
                "the worker to start",
            )
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()

    def close(self) -> None:
        """Close the test process's server."""
        self.server.close()


def check_progress_across_processes(env: OpsEnv, *, task: str = "steps") -> None:
    """A task in a worker process reports progress at each of 3 steps; the test process reads
    each step through ``AsyncResult.progress``, ``machinery status`` shows it in the JSON, and a
    ``machinery watch --plain`` started mid-task prints each step and exits 0 at SUCCESS."""
    gate = str(env.workdir / f"gate-{task}")
    with env.worker():
        result = env.server.send_task(Signature(task, args=[3, gate]))  # type: ignore[list-item]
        watcher = None
        try:
            for i in (1, 2, 3):
                p = wait_until(
                    lambda i=i: _progress_at(result, i),  # type: ignore[misc]
                    30,
                    f"progress {i}/3 of {task} seen from the test process",
                )
                assert p.total == 3, p
                assert p.info == (f"step {i}" if task == "steps" else {"step": i}), p
                assert p.updated_at is not None and abs(time.time() - p.updated_at.timestamp()) < 60, p
                assert result.status == "STARTED"
                if i == 1:
                    status = env.cli("status", result.task_uuid)
                    assert status.returncode == 0, status.stderr
                    stored = json.loads(status.stdout)
                    assert stored["State"] == "STARTED" and stored["Progress"]["Done"] == 1, stored
                    assert stored["Progress"]["Total"] == 3, stored
                    assert "progress: 1/3 (33%)" in status.stderr, status.stderr
                    watcher = env.popen_cli("watch", result.task_uuid, "--plain", "--interval", "0.05")
                assert watcher is not None and watcher.stdout is not None
                # the watcher prints each step before the test lets the task go on
                line = watcher.stdout.readline()
                assert "STARTED" in line and f"{i}/3" in line, line
                Path(f"{gate}.{i}").touch()
            assert result.get(timeout=30) == 3
            assert result.progress is None  # the final state replaces the record
            assert watcher is not None
            out, err = watcher.communicate(timeout=30)
            assert watcher.returncode == 0, (out, err)
            assert "SUCCESS" in out, out
        finally:
            if watcher is not None and watcher.poll() is None:
                watcher.kill()
                watcher.communicate()
        if task == "steps":  # a group UUID stands for its members, one line each
            for k in ("g1", "g2"):
                Path(f"{gate}-{k}.1").touch()
            group = env.server.send_group(
                Group(*(Signature("steps", args=[1, f"{gate}-{k}"]) for k in ("g1", "g2")))  # type: ignore[list-item]
            )
            watched_group = env.cli("watch", group.group_uuid, "--interval", "0.05", "--timeout", "30")
            assert watched_group.returncode == 0, (watched_group.stdout, watched_group.stderr)
            for r in group:
                assert f"{r.task_uuid} steps SUCCESS" in watched_group.stdout, watched_group.stdout
        # watch exits 1 for a failure
        failed = env.server.send_task(Signature("boom"))
        watched = env.cli("watch", failed.task_uuid, "--interval", "0.05", "--timeout", "30")
        assert watched.returncode == 1, (watched.stdout, watched.stderr)
        assert "FAILURE" in watched.stdout and "error: boom" in watched.stdout, watched.stdout


def _progress_at(result: AsyncResult, done: int) -> Progress | None:
    p = result.progress
    return p if p is not None and p.done == done else None


def _dead_when(env: OpsEnv, n: int) -> list[dict[str, Any]] | None:
    rows = _dead(env)
    return rows if len(rows) == n else None


def _dead(env: OpsEnv) -> list[dict[str, Any]]:
    listed = env.cli("dead", "list", "-Q", env.queue, "--json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    return rows


def check_dead_letter_cli(env: OpsEnv) -> None:
    """Tasks that fail with ``stop_task_deletion_on_error`` are dead-lettered by a real worker;
    ``machinery dead list --json`` parses and names them; ``show`` prints the body; ``replay``
    (unchanged, then with ``--new-uuid``) re-sends them and a worker runs them, and each leaves
    the dead letters; ``purge`` asks first, keeps everything on "n", deletes on "y"."""
    marker = env.workdir / "until"
    with env.worker():
        sent = [
            env.server.send_task(Signature("until_ok", args=[str(marker)], stop_task_deletion_on_error=True))  # type: ignore[list-item]
            for _ in range(3)
        ]
        for r in sent:
            assert r.status in ("PENDING", "RECEIVED", "STARTED", "FAILURE")
        for r in sent:
            wait_until(lambda r=r: r.failed(), 30, "the task to fail")  # type: ignore[misc]
        rows = wait_until(lambda: _dead_when(env, 3), 30, "3 dead letters")
        assert {r["uuid"] for r in rows} == {r.task_uuid for r in sent}, rows
        assert all(r["task"] == "until_ok" and r["queue"] == env.queue for r in rows), rows
        by_uuid = {r["uuid"]: r for r in rows}

        shown = env.cli("dead", "show", by_uuid[sent[0].task_uuid]["id"], "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(json.loads(shown.stdout)["body"])["UUID"] == sent[0].task_uuid

        marker.with_name(marker.name + ".ok").touch()
        # replay unchanged: the same UUID runs again and succeeds
        again = env.cli("dead", "replay", by_uuid[sent[0].task_uuid]["id"], "--json")
        assert again.returncode == 0, again.stderr
        replayed = json.loads(again.stdout)
        assert replayed[0]["uuid"] == sent[0].task_uuid and replayed[0]["removed"] is True, replayed
        wait_until(lambda: env.server.async_result(sent[0].task_uuid).successful(), 30, "the replayed task to run")
        assert env.server.async_result(sent[0].task_uuid).get(timeout=5) == "ran"
        # replay with a fresh UUID: a new task; the old one keeps its FAILURE
        fresh = env.cli("dead", "replay", by_uuid[sent[1].task_uuid]["id"], "--new-uuid", "--json")
        assert fresh.returncode == 0, fresh.stderr
        new_uuid = json.loads(fresh.stdout)[0]["uuid"]
        assert new_uuid != sent[1].task_uuid
        assert env.server.async_result(new_uuid).get(timeout=30) == "ran"
        assert env.server.async_result(sent[1].task_uuid).failed()
        assert marker.read_text().count("ran") == 2
        left = _dead(env)
        assert [r["uuid"] for r in left] == [sent[2].task_uuid], left

        # purge asks first: "n" keeps it, then "y" deletes it
        no = env.cli("dead", "purge", "-Q", env.queue, input="n\n")
        assert no.returncode == 1 and "[y/N]" in no.stderr, (no.stdout, no.stderr)
        assert len(_dead(env)) == 1
        closed = env.cli("dead", "purge", "-Q", env.queue)  # no answer (stdin at EOF): not purged
        assert closed.returncode == 1 and len(_dead(env)) == 1
        yes = env.cli("dead", "purge", "-Q", env.queue, input="y\n")
        assert yes.returncode == 0 and "purged 1 dead letter" in yes.stdout, (yes.stdout, yes.stderr)
        assert _dead(env) == []
        unknown = env.cli("dead", "replay", "999999999", "-Q", env.queue)
        assert unknown.returncode == 1 and "no dead letter" in unknown.stderr, unknown.stderr
