"""Progress, ``machinery watch`` and ``machinery dead`` on the embedded ``sqlite://`` transport,
with real worker processes (the checks live in :mod:`machinery.testing.ops`, which plugins run
on their own servers), plus the in-process details: validation, the wire bytes Go sees, the
memory broker's dead letters and the ``plugins`` listing."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from machinery import Config, Server, Signature, TaskContext
from machinery.deadletters import DeadLetterError, purge, replay
from machinery.interfaces import Delivery
from machinery.progress import Progress
from machinery.signature import decode_task_state, encode_task_state
from machinery.state import TaskState
from machinery.testing.ops import OpsEnv, check_dead_letter_cli, check_progress_across_processes
from machinery.watch import watch
from machinery.workflow import Chain, Group


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[OpsEnv]:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    env = OpsEnv(tmp_path, url, url, f"ops_{uuid.uuid4().hex[:8]}")
    yield env
    env.close()


def test_progress_is_visible_mid_task_from_another_process(ops: OpsEnv) -> None:
    check_progress_across_processes(ops)


def test_progress_from_an_async_task(ops: OpsEnv) -> None:
    check_progress_across_processes(ops, task="asteps")


def test_dead_letters_list_show_replay_purge(ops: OpsEnv) -> None:
    check_dead_letter_cli(ops)


# -- in process ---------------------------------------------------------------------------------


def test_a_state_without_progress_keeps_go_bytes() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    plain = TaskState("u1", "STARTED", task_name="t", created_at=when)
    assert encode_task_state(plain) == (
        b'{"TaskUUID":"u1","TaskName":"t","State":"STARTED","Results":null,"Error":"",'
        b'"CreatedAt":"2024-01-02T03:04:05Z","TTL":0}'
    )
    with_progress = TaskState("u1", "STARTED", task_name="t", created_at=when, progress=Progress(2, 4, {"a": 1}, when))
    raw = encode_task_state(with_progress)
    assert raw.startswith(encode_task_state(plain)[:-1] + b',"Progress":{')
    back = decode_task_state(raw)
    assert back.progress == Progress(2, 4, {"a": 1}, when)
    assert back.progress is not None and back.progress.fraction == 0.5
    # a record from elsewhere with an unreadable Progress is a plain state, not an error
    assert decode_task_state(raw.replace(b'"Done":2', b'"Done":"x"')).progress is None
    # lower-case keys (a BSON document) read too
    assert decode_task_state(b'{"State":"STARTED","progress":{"done":1}}').progress == Progress(1)


def test_report_progress_validates_and_needs_a_server() -> None:
    server = Server(Config(broker="memory://ops-validate", result_backend="memory://ops-validate"))
    sig = Signature("t", uuid="task_v")
    ctx = TaskContext(sig, server)
    with pytest.raises(ValueError, match="done"):
        ctx.report_progress(-1)
    with pytest.raises(ValueError, match="finite"):
        ctx.report_progress(float("nan"))
    with pytest.raises(ValueError, match="total"):
        ctx.report_progress(1, 0)
    with pytest.raises(TypeError, match="number"):
        ctx.report_progress("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JSON"):
        ctx.report_progress(1, 2, info=object())
    assert server.get_state("task_v") is None  # nothing was written by a refused call
    p = ctx.report_progress(1, 2, "half")
    assert server.async_result("task_v").progress == p and p.describe() == "1/2 (50%) half"
    with pytest.raises(RuntimeError, match="server"):
        TaskContext(sig).report_progress(1)
    server.close()


def test_memory_broker_dead_letters_and_replay() -> None:
    name = f"memory://ops-dead-{uuid.uuid4().hex[:6]}"
    server = Server(Config(broker=name, result_backend=name))
    broker = server.broker
    assert type(broker).supports_dead_letters
    sig = Signature("t", args=[], uuid="task_dead1")
    server.send_task(sig)
    server.broker.publish(b"not json", Signature("x", routing_key=server.config.default_queue))
    import threading

    stop = threading.Event()
    it = broker.consume(server.config.default_queue, prefetch=2, stop=stop)
    deliveries: list[Delivery] = [next(it), next(it)]
    for d in deliveries:
        broker.nack(d, requeue=False)
    letters = broker.list_dead_letters()
    assert [d.body for d in letters] == [d.body for d in deliveries]
    assert broker.get_dead_letter(letters[0].id) == letters[0]
    bad = next(d for d in letters if d.body == b"not json")
    with pytest.raises(DeadLetterError, match="not a task message"):
        replay(server, bad)
    good = next(d for d in letters if d.body != b"not json")
    r = replay(server, good)
    assert r.removed and r.task_uuid == "task_dead1"
    assert [s.uuid for s in server.get_pending_tasks()] == ["task_dead1"]
    assert server.get_state("task_dead1").state == "PENDING"  # type: ignore[union-attr]
    assert purge(broker) == 1 and broker.list_dead_letters() == []
    stop.set()
    server.close()


def test_plugins_lists_dead_letter_brokers(capsys: pytest.CaptureFixture[str]) -> None:
    from machinery.cli import main

    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["machinery.builtin.sqlite"]["dead_letters"] == ["sqlite"]
    assert rows["machinery.builtin.memory"]["dead_letters"] == ["memory"]
    assert main(["plugins"]) == 0
    assert "dead letters  sqlite" in capsys.readouterr().out


# -- watch ---------------------------------------------------------------------------------------


@pytest.fixture
def gated() -> Iterator[tuple[Server, dict[str, threading.Event]]]:
    """A memory server with an in-thread worker and a task that waits for its gate."""
    name = f"memory://ops-watch-{uuid.uuid4().hex[:6]}"
    server = Server(Config(broker=name, result_backend=name))
    gates: dict[str, threading.Event] = {}

    @server.task("gated")
    def gated_task(ctx: TaskContext, key: str) -> str:
        ctx.report_progress(1, 2, info=key)
        if not gates.setdefault(key, threading.Event()).wait(20):
            raise RuntimeError("gate never opened")
        return key

    @server.task("boom")
    def boom(*args: Any) -> None:
        raise RuntimeError("boom")

    worker = server.new_worker("watch", concurrency=4).launch_in_background()
    yield server, gates
    for g in gates.values():
        g.set()
    worker.quit(timeout=20)
    server.close()


def _open_when_started(server: Server, gates: dict[str, threading.Event], keys: list[str]) -> threading.Thread:
    def run() -> None:
        for key in keys:
            gates.setdefault(key, threading.Event())
        for key in keys:
            time.sleep(0.3)
            gates[key].set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_watch_draws_bars_in_place_on_a_terminal(gated: tuple[Server, dict[str, threading.Event]]) -> None:
    server, gates = gated
    group = server.send_group(Group(Signature("gated", args=["a"]), Signature("gated", args=["b"])))  # type: ignore[list-item]
    _open_when_started(server, gates, ["a", "b"])
    out = io.StringIO()
    assert watch(group, interval=0.02, timeout=20, out=out, tty=True) is True
    text = out.getvalue()
    assert "\x1b[2F" in text  # the two lines are redrawn in place
    assert "[############............]  50% STARTED  gated" in text
    final = text.rsplit("\x1b[2F", 1)[1]
    assert final.count("100% SUCCESS") == 2 and "[" + "#" * 24 + "]" in final


def test_watch_follows_a_chain_whose_later_steps_are_not_sent_yet(
    gated: tuple[Server, dict[str, threading.Event]],
) -> None:
    server, gates = gated
    chain = server.send_chain(Chain(Signature("gated", args=["c1"], immutable=True), Signature("gated", args=["c2"])))  # type: ignore[list-item]
    _open_when_started(server, gates, ["c1", "c2"])
    out = io.StringIO()
    assert watch(chain, interval=0.02, timeout=20, out=out, tty=False) is True
    lines = out.getvalue().splitlines()
    step2 = chain.async_results[1].task_uuid
    assert lines[1].startswith(f"{step2} NO STATE")  # not sent while step 1 runs
    assert lines[-1] == f"{step2} gated SUCCESS"
    # a chain whose first step fails: the second never runs, watch ends after the grace
    bad = server.send_chain(Chain(Signature("boom"), Signature("gated", args=["never"])))  # type: ignore[list-item]
    started = time.monotonic()
    assert watch(bad, interval=0.02, timeout=20, out=io.StringIO(), tty=False, grace=0.5) is False
    assert time.monotonic() - started < 10


def test_watch_cli_expands_a_group_uuid_and_times_out(tmp_path: Path) -> None:
    from machinery.cli import main

    url = f"sqlite:///{tmp_path / 'w.db'}"
    server = Server(Config(broker=url, result_backend=url))
    group = server.send_group(Group(Signature("x"), Signature("y")))  # no worker: they stay PENDING
    server.close()
    code = main(["watch", group.group_uuid, "--broker", url, "--plain", "--timeout", "0.3", "--interval", "0.05"])
    assert code == 124


def test_watch_cli_on_a_terminal_draws_a_bar(tmp_path: Path) -> None:
    """``machinery watch`` with its stdout on a pseudo-terminal redraws in place (ANSI), and
    exits 0 for a task that succeeded."""
    import os
    import pty
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 't.db'}"
    server = Server(Config(broker=url, result_backend=url))
    sig = Signature("resize", uuid="task_tty")
    server.backend.set_state_success(sig, [])
    server.close()
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "machinery", "watch", "task_tty", "--broker", url],
        stdout=slave,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    os.close(master)
    out = b"".join(chunks).decode()
    assert "\x1b[2K[" + "#" * 24 + "] 100% SUCCESS  resize task_tty" in out, repr(out)


def test_dead_cli_usage_and_unsupported_brokers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from machinery.cli import main

    url = f"sqlite:///{tmp_path / 'd.db'}"
    for argv, code, text in (
        (["dead", "show"], 2, "give the id of a dead letter"),
        (["dead", "show", "1", "2"], 2, "one id at a time"),
        (["dead", "list", "7"], 2, "takes no id"),
        (["dead", "list", "--broker", "eager://"], 1, "EagerBroker broker keeps no dead letters"),
        (["dead", "show", "42", "--broker", url], 1, "no dead letter '42'"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == code, argv
        assert text in capsys.readouterr().err, argv
    assert main(["dead", "list", "--broker", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["dead", "purge", "--broker", url]) == 0  # nothing to ask about
    assert "no dead letters" in capsys.readouterr().out


def test_a_late_progress_report_cannot_hide_the_final_state() -> None:
    """A thread the task leaves behind that reports after the task returned gets a RuntimeError;
    the stored state stays SUCCESS (without the guard it would go back to STARTED)."""
    name = f"memory://ops-late-{uuid.uuid4().hex[:6]}"
    server = Server(Config(broker=name, result_backend=name))
    returned, late = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    @server.task("leaves_a_thread")
    def leaves_a_thread(ctx: TaskContext) -> int:
        ctx.report_progress(1, 2)

        def later() -> None:
            returned.wait(5)
            time.sleep(0.2)  # the final state is stored by now
            try:
                ctx.report_progress(2, 2)
            except RuntimeError as exc:
                errors.append(exc)
            late.set()

        threading.Thread(target=later, daemon=True).start()
        return 1

    worker = server.new_worker("late", concurrency=1).launch_in_background()
    try:
        result = server.send_task(Signature("leaves_a_thread"))
        assert result.get(timeout=10) == 1
        returned.set()
        assert late.wait(5)
        assert errors and "has finished" in str(errors[0])
        state = server.get_state(result.task_uuid)
        assert state is not None and state.state == "SUCCESS" and state.progress is None
    finally:
        worker.quit()
        server.close()
