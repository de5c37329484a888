"""The dashboard over HTTP against a real worker process on sqlite:// (pages, JSON, actions,
CSRF, authentication, redaction)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import running

from machinery import Chord, Group, Signature
from machinery.errors import ConfigError
from machinery_dashboard.app import scrub
from machinery_dashboard.cli import check_exposure


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, r.headers.get("Location", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", "") or exc.read().decode()


def wait(cond: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


REDIS_E2E = os.environ.get("MACHINERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(params=["sqlite", "redis"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "redis":
        pytest.importorskip("machinery_redis", reason="needs machinery-redis (pip install -e plugins/machinery-redis)")
        url, queue = REDIS_E2E, f"dash_{uuid.uuid4().hex[:8]}"
    else:
        url, queue = f"sqlite:///{tmp_path / 'm.db'}", "machinery_tasks"
    with running(tmp_path, url, url, hide_args=("secret_*",), queue=queue) as e:
        yield e


def test_chord_graph_and_pages(env: Any) -> None:
    server = env.server
    members = [Signature("add", args=[i, i]) for i in range(3)] + [Signature("explode", args=["no fuel"])]
    chord = Chord(Group(*members), Signature("total"))
    server.send_chord(chord)
    cb = chord.callback.uuid
    bad = members[-1].uuid
    wait(lambda: env.dashboard.store.get(bad) is not None and env.dashboard.store.get(bad).state == "FAILURE")
    wait(lambda: all((s := server.get_state(m.uuid)) is not None and s.is_completed for m in members))
    status, body, _ = get(f"{env.url}/api/workflow/{members[0].uuid}")
    assert status == 200
    g = json.loads(body)
    assert g["kind"] == "chord"
    states = {n["uuid"]: n["state"] for n in g["nodes"]}
    assert states[bad] == "FAILURE"
    assert [states[m.uuid] for m in members[:3]] == ["SUCCESS"] * 3
    assert states[cb] == "PENDING"  # a member failed: the callback never runs
    assert {(e["from"], e["to"], e["kind"]) for e in g["edges"]} == {(m.uuid, cb, "chord") for m in members}
    layers = {n["uuid"]: n["layer"] for n in g["nodes"]}
    assert layers[cb] == 1 and {layers[m.uuid] for m in members} == {0}
    # the same graph from the group's UUID and from the callback's
    by_group = json.loads(get(f"{env.url}/api/workflow/{members[0].group_uuid}")[1])
    assert {n["uuid"] for n in by_group["nodes"]} == set(states)
    # the failed member's detail has the traceback
    t = json.loads(get(f"{env.url}/api/task/{bad}")[1])
    assert t["state"] == "FAILURE" and "member exploded: no fuel" in t["error"]
    assert "Traceback" in t["traceback"] and "ValueError" in t["traceback"]
    # pages render
    for path in ("/", "/tasks", f"/task/{bad}", f"/workflow/{bad}", "/tasks?state=FAILURE", "/dead"):
        status, body, headers = get(env.url + path)
        assert status == 200, (path, body)
        assert "script-src 'self'" in headers["Content-Security-Policy"]
    body = get(f"{env.url}/tasks?state=FAILURE")[1]
    assert bad in body and members[0].uuid not in body
    body = get(f"{env.url}/task/{members[0].uuid}")[1]
    assert "int64" in body and "graph" in body
    overview = get(env.url + "/")[1]
    assert "dash-worker" in overview and env.server.config.default_queue in overview


def test_search_redirects_and_backend_only_tasks(env: Any) -> None:
    # a task whose state only the backend has (the recorder never saw it)
    sig = Signature("add", args=[1, 2], uuid="task_backend_only")
    env.server.backend.set_state_pending(sig)
    status, body, _ = get(f"{env.url}/tasks?q=task_backend_only")
    assert status == 200 and "Not in the event log" in body and "PENDING" in body
    status, body, _ = get(f"{env.url}/tasks?q=nothing_like_it")
    assert "No task or group" in body


def test_actions_need_the_csrf_token(env: Any) -> None:
    sig = Signature("touch", args=[str(env.tmp / "never")])
    sig.countdown(30)
    env.server.send_task(sig)
    assert post(f"{env.url}/revoke", {"uuids": sig.uuid})[0] == 403
    assert post(f"{env.url}/revoke", {"uuids": sig.uuid, "csrf": "wrong"})[0] == 403
    cross = {"Origin": "http://evil.example"}
    assert post(f"{env.url}/revoke", {"uuids": sig.uuid, "csrf": env.dashboard.csrf}, cross)[0] == 403
    status, location = post(f"{env.url}/revoke", {"uuids": sig.uuid, "csrf": env.dashboard.csrf, "back": "/"})
    assert status == 303 and "revoked+1+task" in location
    # purge wants the queue's name typed
    queue = env.server.config.default_queue
    status, location = post(f"{env.url}/purge", {"queue": queue, "confirm": "", "csrf": env.dashboard.csrf})
    assert "purge+not+done" in location
    status, location = post(f"{env.url}/purge", {"queue": queue, "confirm": queue, "csrf": env.dashboard.csrf})
    assert "purged" in location


def test_hidden_arguments(env: Any) -> None:
    sig = Signature("secret_login", args=["hunter2"])
    env.server.send_task(sig)
    wait(lambda: (r := env.dashboard.store.get(sig.uuid)) is not None and r.state == "SUCCESS")
    body = get(f"{env.url}/task/{sig.uuid}")[1]
    assert "arguments hidden" in body and "hunter2" not in body


def test_credentials_never_shown(tmp_path: Path) -> None:
    assert scrub("redis://user:s3cret@host:6379/0 and amqp://u:p@h/") == "redis://***@host:6379/0 and amqp://***@h/"
    with pytest.raises(ConfigError, match="refusing to serve"):
        check_exposure("0.0.0.0", None, None)
    check_exposure("0.0.0.0", "admin:pw", None)
    check_exposure("::1", None, None)
    with pytest.raises(ConfigError, match="USER:PASSWORD"):
        check_exposure("127.0.0.1", "nopassword", None)
    out = subprocess.run(
        [sys.executable, "-m", "machinery", "dashboard", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0 and "refusing to serve the dashboard on '0.0.0.0'" in out.stderr


def test_auth_and_token(tmp_path: Path) -> None:
    import threading

    from machinery import Config, Server
    from machinery_dashboard.app import Dashboard

    db = f"sqlite:///{tmp_path / 'a.db'}"
    server = Server(Config(broker=db, result_backend=db))
    for kw in ({"auth": "admin:pw"}, {"token": "t" * 20}):
        dash = Dashboard(server, index_path=str(tmp_path / "index.db"), **kw)  # type: ignore[arg-type]
        httpd = dash.serve("127.0.0.1", 0)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        try:
            for path in ("/", "/static/dashboard.js", "/api/task/x", "/stream"):
                assert get(url + path)[0] == 401, path
            assert post(url + "/revoke", {"uuids": "x", "csrf": dash.csrf})[0] == 401
            if "auth" in kw:
                good = {"Authorization": "Basic " + base64.b64encode(b"admin:pw").decode()}
                bad = {"Authorization": "Basic " + base64.b64encode(b"admin:nope").decode()}
                assert get(url + "/", bad)[0] == 401
                status, body, _ = get(url + "/", good)
                assert status == 200 and "sqlite" in body
            else:
                assert get(url + "/", {"Authorization": "Bearer " + "t" * 20})[0] == 200
                assert get(url + "/", {"Authorization": "Bearer wrong"})[0] == 401
                req = urllib.request.Request(f"{url}/tasks?token={'t' * 20}")
                opener = urllib.request.build_opener(NoRedirect)
                try:
                    opener.open(req, timeout=10)
                except urllib.error.HTTPError as exc:
                    assert exc.code == 303 and exc.headers["Location"] == "/tasks"
                    cookie = exc.headers["Set-Cookie"].split(";")[0]
                    assert "HttpOnly" in exc.headers["Set-Cookie"]
                assert get(url + "/", {"Cookie": cookie})[0] == 200
        finally:
            httpd.shutdown()
            dash.close()
    server.close()


def test_urls_are_redacted(tmp_path: Path) -> None:
    from machinery import Config, Server
    from machinery_dashboard.app import Dashboard, _overview

    pytest.importorskip("machinery_redis", reason="the redis plugin is installed in the e2e session")
    server = Server(Config(broker="redis://:topsecret@127.0.0.1:6379/14", result_backend="redis://:topsecret@127.0.0.1:6379/14"))
    try:
        html = _overview(Dashboard(server, index_path=str(tmp_path / "index.db")))
    except Exception as exc:  # the password is wrong for the test server: the page must still not show it
        html = str(exc)
    assert "topsecret" not in html
    server.close()


def test_cli_command(tmp_path: Path) -> None:
    """``machinery dashboard`` is found through the plugin host and serves the pages."""
    import socket

    out = subprocess.run([sys.executable, "-m", "machinery", "dashboard", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "--hide-args" in out.stdout and "--auth" in out.stdout
    plugins = subprocess.run([sys.executable, "-m", "machinery", "plugins"], capture_output=True, text=True, timeout=60)
    assert "machinery-dashboard" in plugins.stdout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = f"sqlite:///{tmp_path / 'c.db'}"
    env = dict(os.environ, BROKER=db, RESULT_BACKEND=db, XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "machinery", "dashboard", "--port", str(port), "--token", "0123456789abcdef0123"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body, _ = get(f"http://127.0.0.1:{port}/", {"Authorization": "Bearer 0123456789abcdef0123"})
                break
            except urllib.error.URLError:
                assert proc.poll() is None and time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.2)
        assert status == 200 and "Overview" in body
        assert get(f"http://127.0.0.1:{port}/")[0] == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "machinery dashboard on http://127.0.0.1:" in err and "0123456789abcdef0123" not in err
    assert list((tmp_path / "cache" / "machinery-dashboard").glob("*.db"))  # the index, under XDG_CACHE_HOME


def test_revoke_a_whole_workflow(env: Any) -> None:
    """A chord whose members are delayed, revoked from its workflow page: no member runs, the
    callback is never sent."""
    flags = [env.tmp / f"member-{i}" for i in range(3)]
    members = [Signature("touch", args=[str(f)]).countdown(3) for f in flags]
    chord = Chord(Group(*members), Signature("total"))
    env.server.send_chord(chord)
    g = json.loads(get(f"{env.url}/api/workflow/{members[0].group_uuid}")[1])
    assert {n["uuid"] for n in g["nodes"]} == {m.uuid for m in members}  # from the backend's group metadata
    form = {"workflow": members[0].group_uuid, "csrf": env.dashboard.csrf, "back": "/"}
    status, location = post(f"{env.url}/revoke", form)
    assert status == 303 and "revoked+3+tasks" in location
    for m in members:
        st = env.server.backend.wait_for(m.uuid, 30)
        assert st is not None and (st.state, st.error) == ("FAILURE", "revoked")
    assert not any(f.exists() for f in flags)
    assert env.server.get_state(chord.callback.uuid) is None
