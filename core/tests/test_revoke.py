"""Revoke and rate limits: parsing, the API surface, the CLI against a real worker process.

The end-to-end behaviour on each transport is in :class:`machinery.testing.ControlConformance`
(run for memory and sqlite in test_conformance_*.py); these are the core's own checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from machinery import Config, Server, Signature
from machinery.builtin.memory import MemoryBackend
from machinery.errors import TaskFailedError
from machinery.interfaces import Backend
from machinery.ratelimit import LocalRateLimiter, RateLimit
from machinery.revoke import REVOKED, RevocationWatcher, revoke

APP = """
import time
from machinery import Server

server = Server()

@server.task("touch")
def touch(path: str) -> None:
    with open(path, "a") as f:
        f.write("x")
"""


@pytest.mark.parametrize(
    ("spec", "count", "period"),
    [("100/s", 100, 1), ("10/m", 10, 60), ("1000/h", 1000, 3600), (" 2.5 / sec ", 2.5, 1), ("3/minute", 3, 60)],
)
def test_rate_limit_parse(spec: str, count: float, period: float) -> None:
    limit = RateLimit.parse(spec)
    assert (limit.count, limit.period) == (count, period)
    assert limit.interval == pytest.approx(period / count)


@pytest.mark.parametrize("spec", ["", "10", "10/d", "0/s", "-1/s", "ten/s", "10/s/s"])
def test_rate_limit_parse_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimit.parse(spec)


def test_task_rate_limit_registration() -> None:
    server = Server(Config(broker="memory://rl-reg", result_backend="memory://rl-reg"))

    @server.task("limited", rate_limit="10/s")
    def limited() -> None: ...

    server.register_task("other", lambda: None, rate_limit="5/m")
    assert server.get_registered_task("limited").rate_limit == RateLimit(10, 1)
    assert str(server.get_registered_task("other").rate_limit) == "5/m"
    assert server.get_registered_task("limited").fn is limited
    with pytest.raises(ValueError, match="rate_limit"):
        server.register_task("bad", lambda: None, rate_limit="fast")


def test_local_rate_limiter_spacing() -> None:
    lim = LocalRateLimiter()
    waits = [lim.reserve("k", 0.1, 0.95) for _ in range(12)]
    assert [ok for ok, _ in waits] == [True] * 10 + [False, False]
    assert waits[9][1] == pytest.approx(0.9, abs=0.02)
    assert waits[11][1] == pytest.approx(1.0, abs=0.02)


class _NoControlBackend(MemoryBackend):
    supports_revocation: ClassVar[bool] = False
    supports_rate_limit: ClassVar[bool] = False


def test_revoke_needs_the_capability() -> None:
    backend = _NoControlBackend("memory://no-control", Config())
    with pytest.raises(NotImplementedError, match="cannot store revocations"):
        revoke(backend, ["task_x"])
    assert not Backend.supports_revocation and not Backend.supports_rate_limit


def test_revoke_expires_in_must_be_positive() -> None:
    server = Server(Config(broker="memory://rv-exp", result_backend="memory://rv-exp"))
    with pytest.raises(ValueError, match="expires_in"):
        server.revoke("task_x", expires_in=0)
    assert server.revoke() == []
    assert server.revoke("task_a", "task_a", "") == ["task_a"]


def test_per_worker_fallback_still_limits_and_warns(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """A backend without a shared limiter: the worker says so and enforces the limit alone."""
    server = Server(
        Config(broker="memory://rl-fallback", no_unix_signals=True),
        backend=_NoControlBackend("memory://rl-fallback", Config()),
    )
    starts: list[float] = []

    @server.task("limited", rate_limit="20/s")
    def limited(i: int) -> int:
        starts.append(time.monotonic())
        return i

    worker = server.new_worker("fallback", concurrency=4).launch_in_background()
    try:
        results = [server.send_task(Signature("limited", args=[i])) for i in range(10)]
        assert [r.get(timeout=20) for r in results] == list(range(10))
    finally:
        worker.quit()
    assert "no shared rate limiter" in caplog.text and "limited" in caplog.text
    starts.sort()
    assert starts[-1] - starts[0] >= 9 * 0.05 * 0.9


def test_revoked_failure_sends_no_callbacks() -> None:
    """A revoked task's on_success and on_error callbacks are not sent."""
    url = "memory://rv-callbacks"
    server = Server(Config(broker=url, result_backend=url, no_unix_signals=True))
    ran: list[str] = []

    @server.task("note")
    def note(*args: Any) -> None:
        ran.append(repr(args))

    @server.task("work")
    def work() -> int:
        ran.append("work")
        return 1

    sig = Signature("work", on_success=[Signature("note")], on_error=[Signature("note")])
    result = server.send_task(sig)
    result.revoke()
    worker = server.new_worker("cb", concurrency=2).launch_in_background()
    try:
        with pytest.raises(TaskFailedError) as info:
            result.get(timeout=10)
        assert info.value.error == REVOKED
        time.sleep(0.3)
    finally:
        worker.quit()
    assert ran == []


def test_watcher_keeps_going_through_a_store_outage(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(MemoryBackend):
        fail = True

        def revocations_since(self, cursor: int, limit: int = 1000) -> Any:
            if self.fail:
                raise ConnectionError("store down")
            return super().revocations_since(cursor, limit)

    backend = Flaky("memory://rv-flaky", Config())
    watcher = RevocationWatcher(backend, interval=0.05)
    watcher.start()
    try:
        backend.revoke(["task_1"], terminate=False, ttl=None)
        time.sleep(0.2)
        assert "task_1" not in watcher.revoked
        backend.fail = False
        deadline = time.monotonic() + 5
        while "task_1" not in watcher.revoked and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "task_1" in watcher.revoked
    finally:
        watcher.stop()
    assert caplog.text.count("could not read revocations") == 1


# -- the command line, with a real worker process on the embedded transport ------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "revokeapp.py").write_text(APP)
    out = {k: v for k, v in os.environ.items() if k not in ("BROKER", "RESULT_BACKEND", "DEFAULT_QUEUE")}
    out["MACHINERY_DEFAULT_URL"] = f"sqlite:///{tmp_path / 'revoke.db'}"
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), out.get("PYTHONPATH", "")) if p)
    out["PYTHONUNBUFFERED"] = "1"
    return out


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "machinery", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "machinery", "worker", "--app", "revokeapp", "-c", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            yield log_path
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_cli_revoke_a_delayed_task(env: dict[str, str], worker: Path, tmp_path: Path) -> None:
    touched = tmp_path / "touched"
    sent = run(env, "send", "touch", str(touched), "--countdown", "2")
    assert sent.returncode == 0, sent.stderr
    uuid = sent.stdout.strip()
    out = run(env, "revoke", uuid, "task_other", "--expires-in", "60")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{uuid}  revoked", "task_other  revoked"]
    deadline = time.monotonic() + 20
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = run(env, "status", uuid)
        doc = json.loads(status.stdout)
        if doc["State"] == "FAILURE":
            break
        time.sleep(0.3)
    assert (doc["State"], doc["Error"]) == ("FAILURE", "revoked")
    assert not touched.exists()
    assert "is revoked: not run" in worker.read_text()


def test_cli_revoke_usage(env: dict[str, str]) -> None:
    bad = run(env, "revoke", "task_x", "--expires-in", "0")
    assert bad.returncode == 2 and "expires_in" in bad.stderr
    term = run(env, "revoke", "task_y", "--terminate")
    assert term.returncode == 0 and term.stdout.strip() == "task_y  revoked and terminating"
    plugins = run(env, "plugins")
    assert "control  revoke: yes; rate limits: shared by all workers" in plugins.stdout
    data = json.loads(run(env, "plugins", "--json").stdout)
    default = next(p for p in data if p["name"] == "machinery.builtin.sqlite")
    assert default["control"] == {"revoke": True, "rate_limits": "shared"}
    assert "control" not in next(p for p in data if p["name"] == "machinery.logging_plugin")


def test_terminate_storm_hits_only_its_target(caplog: pytest.LogCaptureFixture) -> None:
    """Terminate revocations fired at thread tasks while they run or finish: every task ends
    SUCCESS or FAILURE "revoked", only revoked ones end revoked, and nothing is left over (an
    exception raised in a thread never lands in the next task of that thread)."""
    import random
    import threading

    url = "memory://rv-storm"
    server = Server(Config(broker=url, result_backend=url, no_unix_signals=True))

    @server.task("spin")
    def spin(ms: int) -> int:
        end = time.monotonic() + ms / 1000
        while time.monotonic() < end:
            time.sleep(0.0005)
        return ms

    worker = server.new_worker("storm", concurrency=8)
    worker.revoke_poll_interval = 0.005
    worker.launch_in_background()
    rng = random.Random(7)
    results = [server.send_task(Signature("spin", args=[rng.randint(2, 20)])) for _ in range(600)]
    targets = {r.task_uuid for r in rng.sample(results, 300)}
    revoked: set[str] = set()
    stop = threading.Event()

    def storm() -> None:  # revoke the targets that are running now
        while not stop.is_set():
            for uuid in list(worker._current):
                if uuid in targets and uuid not in revoked:
                    revoked.add(uuid)
                    server.revoke(uuid, terminate=True)
            time.sleep(0.001)

    t = threading.Thread(target=storm)
    t.start()
    outcomes: dict[str, str] = {}
    try:
        for r in results:
            try:
                r.get(timeout=60)
                outcomes[r.task_uuid] = "ok"
            except TaskFailedError as exc:
                outcomes[r.task_uuid] = exc.error
    finally:
        stop.set()
        t.join()
        worker.quit()
    wrong = {u: o for u, o in outcomes.items() if o not in ("ok", REVOKED)}
    assert not wrong, f"unexpected outcomes: {list(wrong.items())[:5]}"
    hit_innocent = [u for u, o in outcomes.items() if o == REVOKED and u not in revoked]
    assert not hit_innocent, f"{len(hit_innocent)} task(s) revoked that nobody revoked"
    terminated = caplog.text.count("terminated while running")
    assert terminated > 20, f"only {terminated} task(s) were terminated while running"


def test_group_and_chord_results_revoke_every_member() -> None:
    """``GroupResult.revoke()`` revokes each member; ``ChordAsyncResult.revoke()`` the members and
    the callback (stored revocations, read back from the backend)."""
    from machinery import Chord, Group

    url = "memory://rv-group"
    server = Server(Config(broker=url, result_backend=url))
    group = Group(*[Signature("x", args=[i]) for i in range(3)])
    server.send_group(group).revoke(terminate=True)
    chord = Chord(Group(Signature("x", args=[1]), Signature("x", args=[2])), Signature("cb"))
    server.send_chord(chord).revoke()
    found, _ = server.backend.revocations_since(0)
    by_uuid = {r.task_uuid: r for r in found}
    assert {s.uuid for s in group.tasks} <= set(by_uuid)
    assert all(by_uuid[s.uuid].terminate for s in group.tasks)
    assert {*(s.uuid for s in chord.group.tasks), chord.callback.uuid} <= set(by_uuid)
    assert not by_uuid[chord.callback.uuid].terminate


@pytest.mark.parametrize("how", ["time limit", "header"])
def test_terminate_cancels_an_async_task_on_the_time_limited_path(how: str) -> None:
    """A task with a time limit, or a message with headers (a tracing plugin's traceparent),
    runs through :func:`machinery.timelimit.call_limited`: terminate must cancel it there too."""
    import asyncio

    name = f"memory://revoke-limited-{os.getpid()}-{how.replace(' ', '-')}"
    server = Server(Config(broker=name, result_backend=name))
    limit = 30.0 if how == "time limit" else None

    @server.task("sleeper", time_limit=limit)
    async def sleeper(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    worker = server.new_worker("limited", concurrency=2).launch_in_background()
    try:
        sig = Signature("sleeper", args=[60.0])
        if how == "header":
            sig.headers["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        running = server.send_task(sig)
        deadline = time.monotonic() + 10
        while running.status != "STARTED" and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        running.revoke(terminate=True)
        with pytest.raises(TaskFailedError) as info:
            running.get(timeout=5)
        assert info.value.error == "revoked"
        assert time.monotonic() - t0 < 3
    finally:
        worker.quit()
        server.close()
