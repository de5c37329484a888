"""Meta-tests keeping the hook surface honest: every hookspec is documented with a matching
signature and exercised by a ``test_hook_<name>`` test."""

from __future__ import annotations

import inspect
import re
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from machinery import Arg, Config, Server, Signature, hookimpl, hookspecs
from machinery.builtin.memory import MemoryBackend, MemoryBroker
from machinery.events import TaskEvent, WorkerEvent
from machinery.interfaces import Backend, Broker
from machinery.plugins import PluginHost

DOCS = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"
SPECS = {n: f for n, f in vars(hookspecs).items() if n.startswith("machinery_") and callable(f)}


def test_every_hookspec_is_documented_with_its_signature() -> None:
    text = DOCS.read_text()
    documented = dict(re.findall(r"^### (machinery_\w+)\(([^)]*)\)", text, re.M))
    assert set(documented) == set(SPECS)
    for name, fn in SPECS.items():
        params = ", ".join(inspect.signature(fn).parameters)
        assert documented[name] == params, name


def test_every_hookspec_has_a_test() -> None:
    tests = {n for n in dir(sys.modules[__name__]) if n.startswith("test_hook_")}
    assert {f"test_hook_{n}" for n in SPECS} <= tests


def test_every_hookspec_has_a_full_docstring() -> None:
    for name, fn in SPECS.items():
        doc = inspect.getdoc(fn) or ""
        assert "Called" in doc or "called" in doc, f"{name}: say when it is called"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{name}: document {param}"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def _rec(self, name: str, event: Any) -> None:
        with self.lock:
            self.calls.append((name, event))

    @hookimpl
    def machinery_task_received(self, event: TaskEvent) -> None:
        self._rec("received", event)

    @hookimpl
    def machinery_task_started(self, event: TaskEvent) -> None:
        self._rec("started", event)

    @hookimpl
    def machinery_task_succeeded(self, event: TaskEvent) -> None:
        self._rec("succeeded", event)

    @hookimpl
    def machinery_task_failed(self, event: TaskEvent) -> None:
        self._rec("failed", event)

    @hookimpl
    def machinery_task_retried(self, event: TaskEvent) -> None:
        self._rec("retried", event)

    @hookimpl
    def machinery_worker_started(self, event: WorkerEvent) -> None:
        self._rec("worker_started", event)

    @hookimpl
    def machinery_worker_stopped(self, event: WorkerEvent) -> None:
        self._rec("worker_stopped", event)

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]


@pytest.fixture(scope="module")
def run() -> tuple[Recorder, dict[str, str]]:
    host = PluginHost(load_entry_points=False)
    rec = Recorder()
    host.pm.register(rec, name="recorder")
    name = uuid.uuid4().hex
    srv = Server(Config(broker=f"memory://u:secret@{name}", result_backend=f"memory://{name}"), plugins=host)
    attempts = {"n": 0}

    @srv.task("ok")
    def ok(x: int) -> int:
        return x

    @srv.task("bad")
    def bad() -> None:
        raise ValueError("nope")

    @srv.task("again")
    def again() -> str:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("first")
        return "second"

    w = srv.new_worker("hooks", 2).launch_in_background()
    ids = {}
    try:
        ids["ok"] = srv.send_task(Signature("ok", args=[1])).task_uuid
        r = srv.send_task(Signature("bad"))
        ids["bad"] = r.task_uuid
        ids["again"] = srv.send_task(Signature("again", retry_count=1)).task_uuid
        for u in ids.values():
            try:
                srv.async_result(u).get(timeout=10)
            except Exception:
                pass
    finally:
        w.quit()
    return rec, ids


def _events(rec: Recorder, name: str) -> list[Any]:
    return [e for n, e in rec.calls if n == name]


class _TransportPlugin:
    @hookimpl
    def machinery_register_transports(self, registry: Any) -> None:
        registry.add("hooktest", "nowhere:Transport", roles={"broker"}, section="hooktest", env={"HT_X": "x"})


def test_hook_machinery_register_transports() -> None:
    host = PluginHost(load_entry_points=False)
    host.pm.register(_TransportPlugin(), name="hooktest")
    assert "hooktest" in host.schemes("broker") and "hooktest" not in host.schemes("backend")
    assert host.env_options()["HT_X"] == ("hooktest", "x")  # plain data: nothing imported
    assert "hooktest" in host.config_sections()


def test_hook_machinery_register_brokers() -> None:
    host = PluginHost(load_entry_points=False)
    assert "memory" in host.schemes("broker")


def test_hook_machinery_register_backends() -> None:
    host = PluginHost(load_entry_points=False)
    assert "memory" in host.schemes("backend")


def test_hook_machinery_register_locks() -> None:
    host = PluginHost(load_entry_points=False)
    assert "memory" in host.schemes("lock")


def test_hook_machinery_task_received(run: tuple[Recorder, dict[str, str]]) -> None:
    rec, ids = run
    assert {e.signature.uuid for e in _events(rec, "received")} >= set(ids.values())


def test_hook_machinery_task_started(run: tuple[Recorder, dict[str, str]]) -> None:
    rec, ids = run
    assert sum(1 for e in _events(rec, "started") if e.signature.uuid == ids["again"]) == 2


def test_hook_machinery_task_succeeded(run: tuple[Recorder, dict[str, str]]) -> None:
    rec, ids = run
    ev = next(e for e in _events(rec, "succeeded") if e.signature.uuid == ids["ok"])
    assert [r.value for r in ev.results] == [1] and ev.runtime >= 0


def test_hook_machinery_task_failed(run: tuple[Recorder, dict[str, str]]) -> None:
    rec, ids = run
    ev = next(e for e in _events(rec, "failed") if e.signature.uuid == ids["bad"])
    assert ev.error == "nope" and isinstance(ev.exc, ValueError) and "Traceback" in ev.traceback


def test_hook_machinery_task_retried(run: tuple[Recorder, dict[str, str]]) -> None:
    rec, ids = run
    ev = next(e for e in _events(rec, "retried") if e.signature.uuid == ids["again"])
    assert ev.retry_in == 1 and ev.error == "first"


def test_hook_machinery_worker_started(run: tuple[Recorder, dict[str, str]]) -> None:
    rec, _ = run
    ev = _events(rec, "worker_started")[0]
    assert ev.worker is not None and ev.worker.info().consumer_tag == "hooks"
    assert ev.consumer_tag == "hooks" and "secret" not in ev.broker and "***" in ev.broker
    assert set(ev.tasks) == {"ok", "bad", "again"}


def test_hook_machinery_worker_stopped(run: tuple[Recorder, dict[str, str]]) -> None:
    rec, _ = run
    assert rec.names()[-1] == "worker_stopped"


class Publisher:
    def __init__(self) -> None:
        self.before: list[str] = []
        self.after: list[tuple[str, BaseException | None]] = []

    @hookimpl
    def machinery_before_publish(self, signature: Signature) -> None:
        self.before.append(signature.uuid)
        signature.headers["x-test"] = f"seen-{len(self.before)}"

    @hookimpl
    def machinery_after_publish(self, signature: Signature, error: BaseException | None) -> None:
        self.after.append((signature.uuid, error))


def _publishing_server() -> tuple[Server, Publisher]:
    host = PluginHost(load_entry_points=False)
    pub = Publisher()
    host.pm.register(pub, name="publisher")
    name = uuid.uuid4().hex
    return Server(Config(broker=f"memory://{name}", result_backend=f"memory://{name}"), plugins=host), pub


def test_hook_machinery_before_publish() -> None:
    """Headers set by the hook travel with the message, for sends, group members and the
    follow-ups (chain steps) a worker sends."""
    from machinery import Chain, Group

    srv, pub = _publishing_server()
    seen: list[str] = []

    @srv.task("echo")
    def echo(x: int) -> int:
        return x

    w = srv.new_worker("pub", 2)
    w.set_pre_task_handler(lambda sig: seen.append(str(sig.headers.get("x-test"))))
    w.launch_in_background()
    try:
        srv.send_task(Signature("echo", args=[1])).get(timeout=10)
        srv.send_group(Group(Signature("echo", args=[2]), Signature("echo", args=[3]))).get(timeout=10)
        chain = Chain(Signature("echo", args=[4]), Signature("echo"))
        srv.send_chain(chain).get(timeout=10)
    finally:
        w.quit()
    # 1 send + 2 members + 2 chain steps (the second sent by the worker)
    assert len(pub.before) == 5 and len(set(pub.before)) == 5
    assert sorted(seen) == sorted(f"seen-{i}" for i in range(1, 6))
    srv.close()


def test_hook_machinery_after_publish() -> None:
    """Called once per message with None, and with the error when publishing fails."""
    from machinery.errors import PublishError

    srv, pub = _publishing_server()
    r = srv.send_task(Signature("anything"))
    assert pub.after == [(r.task_uuid, None)]

    def refuse(body: bytes, signature: Signature) -> None:
        raise PublishError("refused")

    srv.broker.publish = refuse  # type: ignore[method-assign]
    with pytest.raises(PublishError):
        srv.send_task(Signature("anything"))
    assert isinstance(pub.after[-1][1], PublishError) and len(pub.after) == 2
    srv.close()


class FusingPlugin:
    """Answers ``machinery_fused_publisher`` for the memory pair, counting the questions."""

    def __init__(self) -> None:
        self.asked = 0
        self.fused: list[str] = []

    @hookimpl
    def machinery_fused_publisher(self, broker: Broker, backend: Backend) -> Callable[[bytes, Signature], None] | None:
        self.asked += 1
        if not isinstance(broker, MemoryBroker) or not isinstance(backend, MemoryBackend):
            return None

        def send(body: bytes, sig: Signature) -> None:
            self.fused.append(sig.uuid)
            backend._store_state(backend.pending_state(sig))
            broker.publish(body, sig)

        return send


def test_hook_machinery_fused_publisher() -> None:
    """A plugin that fuses the pair stores PENDING and publishes in its own function, asked
    once per producer; the backend's separate PENDING write is not made."""
    host = PluginHost(load_entry_points=False)
    plugin = FusingPlugin()
    host.pm.register(plugin, name="fusing")
    name = uuid.uuid4().hex
    srv = Server(Config(broker=f"memory://{name}", result_backend=f"memory://{name}"), plugins=host)

    def separate(sig: Signature) -> None:
        raise AssertionError("PENDING stored separately although a plugin fused the pair")

    srv.backend.set_state_pending = separate  # type: ignore[method-assign]
    first = srv.send_task(Signature("add", args=[Arg("int64", 2), Arg("int64", 3)]))
    second = srv.send_task(Signature("add", args=[Arg("int64", 1), Arg("int64", 1)]))
    assert plugin.fused == [first.task_uuid, second.task_uuid]
    assert plugin.asked == 1, "the producer asks once, on its first send"
    assert first.status == "PENDING" and second.status == "PENDING"
    assert [s.uuid for s in srv.get_pending_tasks()] == [first.task_uuid, second.task_uuid]
    srv.close()


class CliPlugin:
    def __init__(self) -> None:
        self.started: list[tuple[str, Any]] = []

    @hookimpl
    def machinery_cli_arguments(self, command: str, parser: Any) -> None:
        if command == "plugins":
            parser.add_argument("--cliplugin-flag", dest="cliplugin_flag", default="off")

    @hookimpl
    def machinery_cli_commands(self, add_command: Any) -> None:
        p = add_command("hello", "say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)

    @hookimpl
    def machinery_cli_started(self, command: str, args: Any) -> None:
        self.started.append((command, getattr(args, "cliplugin_flag", None)))


@pytest.fixture
def cli_plugin(monkeypatch: pytest.MonkeyPatch) -> CliPlugin:
    import machinery.plugins as plugins_mod

    host = PluginHost(load_entry_points=False)
    plugin = CliPlugin()
    host.pm.register(plugin, name="cliplugin")
    monkeypatch.setattr(plugins_mod, "_host", host)
    return plugin


def test_hook_machinery_cli_arguments(cli_plugin: CliPlugin, capsys: pytest.CaptureFixture[str]) -> None:
    from machinery.cli import main

    assert main(["plugins", "--cliplugin-flag", "on"]) == 0
    assert cli_plugin.started == [("plugins", "on")]


def test_hook_machinery_cli_commands(cli_plugin: CliPlugin, capsys: pytest.CaptureFixture[str]) -> None:
    from machinery.cli import main

    assert main(["hello", "--name", "plugins"]) == 0
    assert capsys.readouterr().out == "hello plugins\n"


def test_hook_machinery_cli_started(cli_plugin: CliPlugin, capsys: pytest.CaptureFixture[str]) -> None:
    from machinery.cli import main

    assert main(["plugins"]) == 0
    assert cli_plugin.started == [("plugins", "off")]
