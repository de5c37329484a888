"""Eager mode (``Config(eager=True)``, Go's ``eager://``) and the application fixtures of
``machinery.testing.fixtures``."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from machinery import Config, RetryTaskLater, Server, Signature, TaskContext, TaskFailedError
from machinery.eager import EagerBroker
from machinery.errors import ConfigError, TaskNotRegisteredError
from machinery.workflow import Chain, Chord, Group


def make(config: Config | None = None) -> tuple[Server, list[Any]]:
    server = Server(config or Config(eager=True))
    calls: list[Any] = []

    @server.task("add")
    def add(a: int, b: int) -> int:
        calls.append(("add", a, b, threading.get_ident()))
        return a + b

    @server.task("total")
    def total(*xs: int) -> int:
        return sum(xs)

    @server.task("flaky")
    def flaky(ctx: TaskContext, failures: int) -> str:
        calls.append(("flaky", ctx.retry_count))
        if sum(1 for c in calls if c[0] == "flaky") <= failures:
            raise RuntimeError("not yet")
        return "done"

    @server.task("later")
    def later(times: int) -> int:
        n = sum(1 for c in calls if c[0] == "later")
        calls.append(("later",))
        if n < times:
            raise RetryTaskLater(RuntimeError("busy"), 3600)
        return n

    @server.task("record")
    def record(*args: Any) -> None:
        calls.append(("record", *args))

    @server.task("spawn")
    def spawn(ctx: TaskContext) -> str:
        assert ctx.server is not None
        r = ctx.server.send_task(Signature("record", args=["child"]))  # type: ignore[list-item]
        calls.append(("spawned", r.status))  # the child runs after this task returns
        return "parent"

    @server.task("slow_progress")
    def slow_progress(ctx: TaskContext) -> int:
        ctx.report_progress(1, 2, "half")
        calls.append(("progress", ctx.server.async_result(ctx.task_uuid).progress))  # type: ignore[union-attr]
        return 2

    @server.task("aadd")
    async def aadd(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    return server, calls


def test_a_sent_task_has_run_when_send_returns_in_the_callers_thread() -> None:
    server, calls = make()
    assert isinstance(server.broker, EagerBroker) and server.broker_url == server.backend_url == "eager://"
    r = server.send_task(Signature("add", args=[2, 3]))  # type: ignore[list-item]
    assert r.status == "SUCCESS" and r.get(timeout=0) == 5
    assert calls == [("add", 2, 3, threading.get_ident())]
    assert server.delay("aadd", 1, 2).get(timeout=0) == 3
    loops = [t for t in threading.enumerate() if t.name == "eager-asyncio"]
    assert len(loops) == 1
    server.close()  # stops the event loop thread of async tasks
    loops[0].join(5)
    assert not loops[0].is_alive()


def test_argument_checks_fail_the_task_as_a_worker_does() -> None:
    server, calls = make()
    r = server.send_task(Signature("add", args=["x", 1]))  # type: ignore[list-item]
    assert r.failed() and calls == []
    with pytest.raises(TaskFailedError, match="argument 1 of task 'add'"):
        r.get(timeout=0)
    too_many = server.send_task(Signature("add", args=[1, 2, 3]))  # type: ignore[list-item]
    assert too_many.failed()


def test_retries_run_at_once_until_success_or_exhaustion() -> None:
    server, calls = make()
    ok = server.send_task(Signature("flaky", args=[2], retry_count=3))  # type: ignore[list-item]
    assert ok.get(timeout=0) == "done"
    assert [c for c in calls if c[0] == "flaky"] == [("flaky", 3), ("flaky", 2), ("flaky", 1)]
    calls.clear()
    bad = server.send_task(Signature("flaky", args=[5], retry_count=1))  # type: ignore[list-item]
    assert bad.failed() and len(calls) == 2
    assert server.delay("later", 2).get(timeout=0) == 2  # RetryTaskLater's hour is not waited for


def test_callbacks_chain_group_chord() -> None:
    server, calls = make()
    sig = Signature(
        "add",
        args=[1, 1],  # type: ignore[list-item]
        on_success=[Signature("record", args=["ok"])],  # type: ignore[list-item]
        on_error=[Signature("record", args=["err"])],  # type: ignore[list-item]
    )
    server.send_task(sig)
    assert ("record", "ok", 2) in calls
    bad = Signature("add", args=["x", 1], on_error=[Signature("record")])  # type: ignore[list-item]
    server.send_task(bad)
    assert any(c[0] == "record" and "argument 1" in c[1] for c in calls)

    chain = server.send_chain(Chain(Signature("add", args=[1, 2]), Signature("add", args=[10])))  # type: ignore[list-item]
    assert chain.get(timeout=0) == 13
    group = server.send_group(Group(*(Signature("add", args=[i, i]) for i in range(4))))  # type: ignore[list-item]
    assert group.get(timeout=0) == [0, 2, 4, 6]
    chord = server.send_chord(
        Chord(Group(*(Signature("add", args=[i, 1]) for i in range(3))), Signature("total"))  # type: ignore[list-item]
    )
    assert chord.get(timeout=0) == 6


def test_work_sent_by_a_task_runs_after_it_and_before_send_returns() -> None:
    server, calls = make()
    assert server.delay("spawn").get(timeout=0) == "parent"
    assert calls == [("spawned", "PENDING"), ("record", "child")]


def test_progress_and_unregistered_names() -> None:
    server, calls = make()
    assert server.delay("slow_progress").get(timeout=0) == 2
    p = calls[0][1]
    assert (p.done, p.total, p.info) == (1, 2, "half")
    with pytest.raises(TaskNotRegisteredError):
        server.delay("nope")


def test_eager_from_yaml_env_and_go_urls(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text("eager: true\ndefault_queue: q\n")
    assert Config.load(str(cfg)).eager is True
    assert Config.from_env({"MACHINERY_EAGER": "1"}).eager is True
    assert Config.from_env({"MACHINERY_EAGER": "false"}).eager is False
    with pytest.raises(ConfigError, match="eager"):
        Config(eager="perhaps")  # type: ignore[arg-type]
    server, _ = make(Config(broker="eager://", result_backend="eager://"))
    assert server.delay("add", 1, 1).get(timeout=0) == 2
    # eager broker, real backend: the states land in the database
    db = f"sqlite:///{tmp_path / 'e.db'}"
    server, _ = make(Config(eager=True, result_backend=db))
    r = server.delay("add", 4, 4)
    reader = Server(Config(broker=db, result_backend=db))
    assert reader.async_result(r.task_uuid).get(timeout=1) == 8
    reader.close()
    server.close()


APP = '''
from machinery import Server, Config, TaskContext

server = Server(Config(broker="sqlite:////nonexistent/never-used.db"))

@server.task("add")
def add(a: int, b: int) -> int:
    return a + b

def checkout(n: int):
    """application code that sends through the module-level server"""
    return server.delay("add", n, 1)
'''

CONFTEST = '''
import pytest
pytest_plugins = ["machinery.testing.fixtures"]

@pytest.fixture
def machinery_app():
    import shopapp
    return shopapp.server
'''

TESTS = '''
import threading
import pytest
import shopapp

def test_worker(machinery_test_worker):
    assert shopapp.checkout(41).get(timeout=10) == 42
    assert machinery_test_worker.running
    assert shopapp.server.broker_url.startswith("memory://pytest-")

def test_eager(machinery_eager_server):
    r = shopapp.checkout(1)
    assert r.status == "SUCCESS" and r.get(timeout=0) == 2

def test_restored_after():
    assert shopapp.server.broker_url == "sqlite:////nonexistent/never-used.db"
    assert threading.active_count() < 10

class TestOnSqlite:
    @pytest.fixture
    def machinery_test_url(self, tmp_path):
        return f"sqlite:///{tmp_path / 'app.db'}"

    def test_sqlite_worker(self, machinery_test_worker, machinery_test_server, tmp_path):
        assert shopapp.checkout(2).get(timeout=20) == 3
        assert (tmp_path / "app.db").exists()
        assert shopapp.server is machinery_test_server
'''


def test_application_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(shopapp=APP, conftest=CONFTEST, test_shop=TESTS)
    pytester.syspathinsert()
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_missing_app_fixture_says_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["machinery.testing.fixtures"]')
    pytester.makepyfile("def test_x(machinery_eager_server):\n    pass\n")
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*define a `machinery_app` fixture*"])
