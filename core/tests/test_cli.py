"""The ``machinery`` command line, run as ``python -m machinery`` in subprocesses (argument
parsing and app loading are also tested in-process)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery import ArgumentTypeError, Server
from machinery.cli import CLIError, load_app, parse_arg

APP = """
import time
from machinery import Server

server = Server()

@server.task("add")
def add(*n: int) -> int:
    return sum(n)

@server.task("fail")
def fail() -> None:
    raise ValueError("nope")

@server.task("sleep")
def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"

@server.task("touch")
def touch(path: str) -> None:
    with open(path, "a") as f:
        f.write("x")
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "cliapp.py").write_text(APP)
    out = {k: v for k, v in os.environ.items() if k not in ("BROKER", "RESULT_BACKEND", "DEFAULT_QUEUE")}
    out["MACHINERY_DEFAULT_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), out.get("PYTHONPATH", "")) if p)
    out["PYTHONUNBUFFERED"] = "1"
    return out


def run(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "machinery", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "machinery", "worker", "--app", "cliapp", "-c", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


def wait_for_log(path: Path, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in log:\n{path.read_text() if path.exists() else ''}")


# -- typed arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "type_", "value"),
    [
        ("1", "int64", 1),
        ("-7", "int64", -7),
        ("1.5", "float64", 1.5),
        ("true", "bool", True),
        ("false", "bool", False),
        ("hello", "string", "hello"),
        ("http://x:1", "string", "http://x:1"),
        ("int64:1", "int64", 1),
        ("int8:-3", "int8", -3),
        ("string:1", "string", "1"),
        ("string:", "string", ""),
        ("bool:true", "bool", True),
        ("float64:2", "float64", 2.0),
        ("[]int64:1,2", "[]int64", [1, 2]),
        ("[]int64:[3,4]", "[]int64", [3, 4]),
        ("[]int64:", "[]int64", []),
        ("[]string:a,b", "[]string", ["a", "b"]),
        ("[]string:1,2", "[]string", ["1", "2"]),
        ("[]bool:true,false", "[]bool", [True, False]),
    ],
)
def test_parse_arg(text: str, type_: str, value: object) -> None:
    arg = parse_arg(text)
    assert (arg.type, arg.value) == (type_, value)


@pytest.mark.parametrize("text", ["int64:abc", "int8:300", "bool:maybe", "[]int64:1,x"])
def test_parse_arg_rejects(text: str) -> None:
    with pytest.raises(ArgumentTypeError):
        parse_arg(text)


def test_load_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MACHINERY_DEFAULT_URL", f"sqlite:///{tmp_path / 'x.db'}")
    (tmp_path / "app_one.py").write_text("from machinery import Server\nmine = Server()\n")
    (tmp_path / "app_two.py").write_text("from machinery import Server\na = Server()\nb = Server()\n")
    (tmp_path / "app_none.py").write_text("x = 1\n")
    (tmp_path / "app_factory.py").write_text("from machinery import Server\ndef make():\n    return Server()\n")
    (tmp_path / "app_broken.py").write_text("raise RuntimeError('boom at import')\n")
    assert isinstance(load_app("app_one"), Server)
    assert isinstance(load_app("app_two:b"), Server)
    assert isinstance(load_app("app_factory:make"), Server)
    for spec, message in [
        ("app_two", "several Servers (a, b)"),
        ("app_none", "defines no machinery Server"),
        ("app_none:x", "not a machinery Server"),
        ("app_one:nope", "no attribute 'nope'"),
        ("no_such_module_here", "no module named 'no_such_module_here'"),
        ("app_broken", "RuntimeError: boom at import"),
    ]:
        with pytest.raises(CLIError, match=re.escape(message)):
            load_app(spec)


# -- commands ---------------------------------------------------------------------------------


def test_send_inspect_status_purge(env: dict[str, str]) -> None:
    sent = run(env, "send", "add", "1", "int64:2", "[]int64:3,4")
    assert sent.returncode == 0, sent.stderr
    uuid = sent.stdout.strip()
    assert uuid.startswith("task_")
    delayed = run(env, "send", "add", "5", "--countdown", "60", "--queue", "other")
    assert delayed.returncode == 0

    pending = run(env, "inspect", "pending")
    assert pending.returncode == 0
    assert f"{uuid}  add(1, 2, [3, 4])  queue=machinery_tasks" in pending.stdout
    assert "1 pending task in queue 'machinery_tasks'" in pending.stderr
    raw = run(env, "inspect", "pending", "--json")
    assert json.loads(raw.stdout.splitlines()[0])["UUID"] == uuid

    later = run(env, "inspect", "delayed", "--queue", "other")
    assert "add(5)" in later.stdout and "eta=" in later.stdout
    assert run(env, "inspect", "delayed", "--queue", "machinery_tasks").stdout == ""

    status = run(env, "status", uuid)
    assert status.returncode == 0
    doc = json.loads(status.stdout)
    assert doc["TaskUUID"] == uuid and doc["State"] == "PENDING" and doc["TaskName"] == "add"

    purged = run(env, "purge")
    assert purged.stdout.strip() == "purged 1 message from queue 'machinery_tasks'"
    assert "0 pending tasks" in run(env, "inspect", "pending").stderr
    assert run(env, "purge", "--queue", "other").stdout.startswith("purged 1 message")

    missing = run(env, "status", "task_missing")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "machinery: error: no state stored for task_missing (unknown, expired or purged)"


def test_worker_runs_tasks_and_stops_warm(env: dict[str, str], worker: subprocess.Popen[str], tmp_path: Path) -> None:
    ok = run(env, "send", "add", "1", "2", "--wait", "--timeout", "20")
    assert ok.returncode == 0, ok.stderr
    uuid, value = ok.stdout.split()
    assert value == "3"
    assert json.loads(run(env, "status", uuid).stdout)["State"] == "SUCCESS"

    failed = run(env, "send", "fail", "--wait", "--timeout", "20")
    assert failed.returncode == 1
    assert failed.stderr.strip() == "FAILURE: nope"

    timed_out = run(env, "send", "not_registered_anywhere", "--wait", "--timeout", "0.5")
    assert timed_out.returncode == 124
    assert "timed out after 0.5s" in timed_out.stderr

    log = wait_for_log(tmp_path / "worker.log", "succeeded add")
    assert "ready: queue=machinery_tasks concurrency=2" in log and f"sqlite:///{tmp_path / 'cli.db'}" in log

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    log = (tmp_path / "worker.log").read_text()
    assert "warm shutdown" in log and "stopped" in log and "Traceback" not in log.split("ValueError")[0]


def test_second_signal_exits_at_once(env: dict[str, str], worker: subprocess.Popen[str], tmp_path: Path) -> None:
    wait_for_log(tmp_path / "worker.log", "ready:")
    sent = run(env, "send", "sleep", "float64:30")
    assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + 10
    while json.loads(run(env, "status", sent.stdout.strip()).stdout)["State"] != "STARTED":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert worker.poll() is None  # warm: waits for the running task
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(5) == 128 + signal.SIGTERM
    # The unacknowledged message stays in the queue, for redelivery.
    assert "add" not in run(env, "inspect", "pending").stdout


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("results_expire_in: abc\n", "'results_expire_in'"),
        ("no_such_key: 1\n", "'no_such_key'"),
        ("broker: not-a-url\n", "'broker'"),
        ("sqlite:\n  visibility_timeout: -1\n", "'sqlite.visibility_timeout'"),
        ("sqlite:\n  bogus: 1\n", "'sqlite.bogus'"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(env: dict[str, str], tmp_path: Path, yaml_text: str, key: str) -> None:
    cfg = tmp_path / "machinery.yml"
    cfg.write_text(yaml_text)
    res = run(env, "inspect", "pending", "--config", str(cfg))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("machinery: error: config key ") and key in lines[0]
    assert "Traceback" not in res.stderr


def test_bad_environment_and_missing_file(env: dict[str, str], tmp_path: Path) -> None:
    res = run({**env, "RESULTS_EXPIRE_IN": "soon"}, "purge")
    assert res.returncode == 2 and "'results_expire_in'" in res.stderr and "Traceback" not in res.stderr
    res = run(env, "purge", "--config", str(tmp_path / "missing.yml"))
    assert res.returncode == 2 and "cannot read config file" in res.stderr


def test_config_file_and_flags(env: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    cfg = tmp_path / "machinery.yml"
    cfg.write_text(f"broker: sqlite:///{other}\ndefault_queue: from_file\n")
    assert run(env, "send", "add", "1", "--config", str(cfg)).returncode == 0
    assert "1 pending task in queue 'from_file'" in run(env, "inspect", "pending", "--config", str(cfg)).stderr
    flagged = run(env, "inspect", "pending", "--config", str(cfg), "--broker", f"sqlite:///{tmp_path / 'x.db'}")
    assert "0 pending tasks in queue 'from_file'" in flagged.stderr


def test_unknown_scheme_gives_the_pip_hint(env: dict[str, str]) -> None:
    res = run(env, "send", "add", "1", "--broker", "sqs://queue.example")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "machinery: error: no plugin registered for sqs:// as a broker; installed broker schemes: "
        + res.stderr.split("installed broker schemes: ")[1].split(".")[0]
        + ". Try: pip install machinery-sqs"
    )
    assert "sqlite" in res.stderr


def test_bad_app_and_usage(env: dict[str, str]) -> None:
    res = run(env, "worker", "--app", "no_such_app_module")
    assert res.returncode == 2 and "no module named 'no_such_app_module'" in res.stderr
    res = run(env, "send")
    assert res.returncode == 2 and "usage:" in res.stderr
    res = run(env, "send", "add", "int8:999")
    assert res.returncode == 2 and "int8" in res.stderr and "Traceback" not in res.stderr


def test_plugins_lists_builtins_and_failures(env: dict[str, str], tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "machinery_brokenplug-0.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: machinery-brokenplug\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[machinery]\nbrokenplug = machinery_brokenplug\n")
    (site / "machinery_brokenplug.py").write_text("raise ImportError('needs libfoo')\n")
    res = run({**env, "PYTHONPATH": f"{site}{os.pathsep}{env['PYTHONPATH']}"}, "plugins")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "machinery.builtin.sqlite  (machinery-core" in out
    assert "broker: sqlite" in out and "machinery_register_transports" in out
    assert "brokenplug  (machinery-brokenplug 0.3)  [FAILED]" in out
    assert "ImportError: needs libfoo" in out
    data = json.loads(run({**env, "PYTHONPATH": f"{site}{os.pathsep}{env['PYTHONPATH']}"}, "plugins", "--json").stdout)
    broken = next(p for p in data if p["name"] == "brokenplug")
    assert broken["version"] == "0.3" and "needs libfoo" in broken["error"]


PERIODIC_APP = """
from machinery import Server, Signature, Arg
import os

server = Server()

@server.task("touch")
def touch(path: str) -> None:
    with open(path, "a") as f:
        f.write("x")

touch_sig = Signature("touch", args=[Arg("string", os.environ["TOUCH_FILE"])])
server.register_periodic_task("@every 1s", "touch-every-second", touch_sig)
"""


def test_beat_and_worker_beat(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "periodicapp.py").write_text(PERIODIC_APP)
    touched = tmp_path / "touched"
    penv = {**env, "TOUCH_FILE": str(touched)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "machinery", "worker", "--app", "periodicapp", "--beat"],
        env=penv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not (touched.exists() and len(touched.read_text()) >= 2):
            assert time.monotonic() < deadline, "the periodic task did not run twice"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=15)[0]
    assert proc.returncode == 0, out

    beat = subprocess.Popen(
        [sys.executable, "-m", "machinery", "beat", "--app", "periodicapp"],
        env=penv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while "touch(" not in run(penv, "inspect", "pending").stdout:
            assert time.monotonic() < deadline, "beat sent nothing"
            time.sleep(0.2)
    finally:
        beat.send_signal(signal.SIGTERM)
        out = beat.communicate(timeout=15)[0]
    assert beat.returncode == 0, out

    res = run(env, "beat", "--app", "cliapp")
    assert res.returncode == 2 and "registers no periodic tasks" in res.stderr


def test_python_dash_m_and_version(env: dict[str, str]) -> None:
    res = run(env, "--version")
    assert res.returncode == 0 and res.stdout.startswith("machinery ")
    res = run(env, "--help")
    assert all(cmd in res.stdout for cmd in ("worker", "send", "status", "inspect", "purge", "plugins", "beat"))
    assert "\n    demo " not in res.stdout  # machinery-demo's command, not the core's


def test_console_script_entry_point() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "machinery"]
    assert ep.value == "machinery.cli:main"


def test_main_in_process(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from machinery.cli import main

    monkeypatch.setenv("MACHINERY_DEFAULT_URL", f"sqlite:///{tmp_path / 'inproc.db'}")
    assert main(["send", "add", "2", "3"]) == 0
    uuid = capsys.readouterr().out.strip()
    assert main(["status", uuid]) == 0
    assert json.loads(capsys.readouterr().out)["State"] == "PENDING"
    with pytest.raises(SystemExit) as info:
        main(["status", "task_nope"])
    assert info.value.code == 1


# -- issue 17, D6: unknown type prefixes, out-of-range values, bad usage is exit 2 ----------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("int99:1", "unknown Go type 'int99'"),
        ("uint128:5", "unknown Go type 'uint128'"),
        ("[]int99:1,2", "unknown Go type '[]int99'"),
        ("float16:1.5", "unknown Go type 'float16'"),
        ("strin:x", "unknown Go type 'strin'"),
        ("int8:300", "out of range"),
        ("[]int8:1,300", "out of range"),
        ("uint8:-1", "out of range"),
    ],
)
def test_parse_arg_says_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(ArgumentTypeError) as info:
        parse_arg(text)
    assert fragment in str(info.value)
    if "unknown" in fragment:
        assert f"string:{text}" in str(info.value)  # how to send the text as it is


@pytest.mark.parametrize(
    ("text", "value"),
    [("string:int99:1", "int99:1"), ("string:int8:300", "int8:300"), ("mailto:x@y", "mailto:x@y"), ("a:b", "a:b")],
)
def test_a_text_with_a_colon_is_sent_as_it_is_with_string_prefix_or_no_type_like_prefix(text: str, value: str) -> None:
    arg = parse_arg(text)
    assert (arg.type, arg.value) == ("string", value)


def test_send_usage_errors_exit_2_with_one_clear_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from machinery.cli import main

    monkeypatch.setenv("MACHINERY_DEFAULT_URL", f"sqlite:///{tmp_path / 'usage.db'}")
    for argv, fragment in [
        (["send", "rec", "int99:1"], "unknown Go type 'int99'"),
        (["send", "rec", "int8:300"], "out of range"),
        (["send", ""], "task name"),
        (["send", "  "], "task name"),
        (["send", "add", "--priority", "999"], "priority"),
        (["send", "add", "--priority", "-1"], "priority"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2, (argv, err)
        assert fragment in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "usage.db").exists() or main(["inspect", "pending"]) == 0
    assert capsys.readouterr().out.strip() in ("", "(none)", "no pending tasks"), "a bad send was sent"


def test_other_bad_usage_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from machinery.cli import main

    monkeypatch.setenv("MACHINERY_DEFAULT_URL", f"sqlite:///{tmp_path / 'usage2.db'}")
    for argv, fragment in [
        (["status", ""], "task UUID"),
        (["send", "add", "--retry-count", str(2**31)], "retry-count"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and fragment in err and "Traceback" not in err, (argv, err)
