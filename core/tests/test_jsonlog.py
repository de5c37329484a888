"""``--log-format json``: one JSON object per line with the task's fields, URLs redacted."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from machinery import Config, Server
from machinery.jsonlog import JsonFormatter, configure

APP = """
from machinery import Config, Server

server = Server(Config.from_env())

@server.task("add")
def add(a: int, b: int) -> int:
    return a + b

@server.task("fail")
def fail() -> None:
    raise ValueError("nope amqp://guest:hunter2@rabbit:5672/")
"""


def test_formatter_fields_and_redaction() -> None:
    stream = io.StringIO()
    configure("info", "json", stream)
    try:
        logging.getLogger("machinery.test").info(
            "connecting to %s", "redis://user:s3cret@host:6379/0", extra={"task_name": "t", "state": "SUCCESS"}
        )
        try:
            raise RuntimeError("at amqp://u:pw@h/")
        except RuntimeError:
            logging.getLogger("machinery.test").exception("boom")
    finally:
        logging.getLogger().handlers[:] = []
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["level"] == "INFO" and first["logger"] == "machinery.test"
    assert first["message"] == "connecting to redis://user:***@host:6379/0"
    assert first["task_name"] == "t" and first["state"] == "SUCCESS"
    assert "timestamp" in first and first["timestamp"].endswith("+00:00")
    assert "s3cret" not in stream.getvalue() and ":pw@" not in stream.getvalue()
    assert "RuntimeError" in lines[1]["exception"]


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        configure("info", "xml")
    assert JsonFormatter().format(logging.makeLogRecord({"msg": "x"})).startswith("{")


def test_worker_logs_json_lines_with_task_fields(tmp_path: Path, db_path: Path) -> None:
    (tmp_path / "jsonapp.py").write_text(APP)
    env = dict(os.environ)
    env.update(
        BROKER=f"sqlite:///{db_path}",
        RESULT_BACKEND=f"sqlite:///{db_path}",
        PYTHONPATH=str(tmp_path) + os.pathsep + env.get("PYTHONPATH", ""),
        MACHINERY_LOG_FORMAT="json",  # the env var; the flag is tested below
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "machinery", "worker", "--app", "jsonapp", "-c", "2"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(Config(broker=env["BROKER"], result_backend=env["RESULT_BACKEND"]))
    try:
        ok = server.delay("add", 1, 2)
        assert ok.get(timeout=30) == 3
        bad = server.delay("fail")
        server.backend.wait_for(bad.task_uuid, 30)
        time.sleep(0.3)
    finally:
        server.close()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines, "no log lines"
    assert all({"timestamp", "level", "logger", "message"} <= set(line) for line in lines)
    done = [line for line in lines if line.get("task_uuid") == ok.task_uuid]
    assert len(done) == 1
    assert done[0]["task_name"] == "add" and done[0]["state"] == "SUCCESS" and done[0]["duration"] >= 0
    failed = [line for line in lines if line.get("task_uuid") == bad.task_uuid]
    assert len(failed) == 1 and failed[0]["state"] == "FAILURE" and failed[0]["level"] == "ERROR"
    assert "hunter2" not in err
    assert "amqp://guest:***@rabbit" in failed[0]["message"]


def test_log_format_flag(tmp_path: Path, db_path: Path) -> None:
    (tmp_path / "jsonapp.py").write_text(APP)
    env = dict(os.environ, BROKER=f"sqlite:///{db_path}", PYTHONPATH=str(tmp_path))
    env.pop("MACHINERY_LOG_FORMAT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "machinery", "worker", "--app", "jsonapp", "--log-format", "json"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines()]
    assert any(line["message"].startswith("worker ") and line["logger"] == "machinery.worker" for line in lines)


def test_trace_id_from_a_w3c_traceparent_header() -> None:
    from machinery import Signature
    from machinery.events import TaskEvent
    from machinery.logging_plugin import machinery_task_succeeded

    sig = Signature("t", uuid="task_1")
    sig.headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    stream = io.StringIO()
    configure("info", "json", stream)
    try:
        machinery_task_succeeded(TaskEvent(sig, "w", runtime=0.5))
    finally:
        logging.getLogger().handlers[:] = []
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert line["task_uuid"] == "task_1" and line["state"] == "SUCCESS" and line["duration"] == 0.5


def test_successes_are_logged_at_info_and_cost_no_event_above_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the built-in logging plugin as the only observer of successes, a worker builds and
    fires the success event only while ``machinery.task`` logs at INFO (its one use)."""
    from machinery import Signature
    from machinery.events import TaskEvent
    from machinery.plugins import PluginHost

    host = PluginHost(load_entry_points=False)
    assert host.has_task_observers()["succeeded"]  # the logging plugin
    assert not host.has_task_observers(besides=("machinery.logging_plugin",))["succeeded"]
    name = f"succ_{time.time_ns()}"
    srv = Server(Config(broker=f"memory://{name}", result_backend=f"memory://{name}"), plugins=host)
    srv.register_task("ok", lambda x: x)
    fired: list[TaskEvent] = []
    monkeypatch.setattr(host, "task_succeeded", fired.append)
    task_log = logging.getLogger("machinery.task")
    before = task_log.level
    w = srv.new_worker("succ", 1).launch_in_background()
    try:
        task_log.setLevel(logging.WARNING)
        assert srv.send_task(Signature("ok", args=[1])).get(timeout=10) == 1
        assert fired == []
        task_log.setLevel(logging.INFO)  # read per task: a level changed at run time counts
        assert srv.send_task(Signature("ok", args=[2])).get(timeout=10) == 2
        deadline = time.monotonic() + 5
        while not fired and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e.signature.args[0].value for e in fired] == [2]
    finally:
        w.quit()
        task_log.setLevel(before)
