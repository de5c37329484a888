"""A real worker process serving /metrics, scraped over HTTP and parsed with prometheus-client's
own parser; the counts of a 100-task run must be exact."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from machinery import Config, Server, Signature
from machinery.plugins import get_plugin_host

APP = """
from machinery import Config, Server

server = Server(Config.from_env())

@server.task("ok")
def ok(x: int) -> int:
    return x

@server.task("bad")
def bad() -> None:
    raise ValueError("nope")

@server.task("flaky")
def flaky() -> None:
    raise RuntimeError("always")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wait_scrape(port: int, timeout: float = 30) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return scrape(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_plugin_is_listed() -> None:
    info = next(i for i in get_plugin_host().infos() if i.name == "prometheus")
    assert info.distribution == "machinery-prometheus" and info.error is None
    assert "machinery_worker_started" in info.hooks and "machinery_before_publish" in info.hooks
    out = subprocess.run(
        [sys.executable, "-m", "machinery", "plugins"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "prometheus  (machinery-prometheus" in out.stdout
    helptext = subprocess.run(
        [sys.executable, "-m", "machinery", "worker", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "--metrics-port" in helptext


def test_hundred_tasks_counted_exactly(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    (tmp_path / "promapp.py").write_text(APP)
    port = free_port()
    env = dict(os.environ, BROKER=f"sqlite:///{db}", RESULT_BACKEND=f"sqlite:///{db}")
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "machinery", "worker", "--app", "promapp", "-c", "4", "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(Config(broker=env["BROKER"], result_backend=env["RESULT_BACKEND"]))
    try:
        before = wait_scrape(port)
        assert ("machinery_queue_depth", (("queue", "machinery_tasks"),)) in before
        results = [server.send_task(Signature("ok", args=[i])) for i in range(80)]
        results += [server.send_task(Signature("bad")) for _ in range(15)]
        results += [server.send_task(Signature("flaky", retry_count=1)) for _ in range(5)]
        for r in results:
            state = server.backend.wait_for(r.task_uuid, 60)
            assert state is not None and state.is_completed, state
        # the last hooks fire right after the state is stored: wait for the counts to settle
        deadline = time.monotonic() + 10
        while True:
            m = scrape(port)
            if sum(v for (n, _), v in m.items() if n == "machinery_tasks_total") >= 100 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        server.close()
        proc.terminate()
        _, err = proc.communicate(timeout=30)

    def value(name: str, **labels: str) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("machinery_tasks_total", task="ok", state="SUCCESS") == 80
    assert value("machinery_tasks_total", task="bad", state="FAILURE") == 15
    assert value("machinery_tasks_total", task="flaky", state="FAILURE") == 5
    assert value("machinery_tasks_total", task="ok", state="FAILURE") == 0
    assert sum(v for (n, _), v in m.items() if n == "machinery_tasks_total") == 100
    assert value("machinery_task_retries_total", task="flaky") == 5
    assert value("machinery_task_runtime_seconds_count", task="ok") == 80
    assert value("machinery_task_runtime_seconds_count", task="flaky") == 10  # two attempts each
    assert value("machinery_task_queue_latency_seconds_count", task="ok") == 80
    assert value("machinery_task_queue_latency_seconds_count", task="flaky") == 10
    # the retried attempts waited for their ETA (about 1 s, Fibonacci back-off), the others did not
    assert value("machinery_task_queue_latency_seconds_sum", task="ok") < 80 * 5
    for task in ("ok", "bad", "flaky"):
        assert value("machinery_tasks_in_progress", task=task) == 0
    assert value("machinery_queue_depth", queue="machinery_tasks") == 0
    assert "lifecycle hook raised" not in err, err


def test_queue_depth_collector_counts_waiting_messages() -> None:
    from machinery_prometheus.metrics import QueueDepthCollector

    name = os.urandom(4).hex()
    server = Server(Config(broker=f"memory://{name}", result_backend=f"memory://{name}"))
    for _ in range(3):
        server.send_task(Signature("x", routing_key="depthq"))
    worker = server.new_worker(queue="depthq")
    (family,) = list(QueueDepthCollector(worker).collect())
    assert [(s.labels, s.value) for s in family.samples] == [({"queue": "depthq"}, 3.0)]
    server.close()


def test_publish_time_header_is_set_and_go_safe() -> None:
    name = os.urandom(4).hex()
    server = Server(Config(broker=f"memory://{name}", result_backend=f"memory://{name}"))
    t0 = time.time()
    sig = Signature("x")
    server.send_task(sig)
    stamp = sig.headers["machinery_published_at"]
    assert isinstance(stamp, float) and t0 <= stamp <= time.time()
    from machinery.signature import decode_signature, encode_signature

    assert decode_signature(encode_signature(sig)).headers["machinery_published_at"] == stamp
    server.close()


@pytest.mark.parametrize("bad", ["x", "70000"])
def test_bad_port_is_an_error(bad: str, tmp_path: Path) -> None:
    (tmp_path / "promapp.py").write_text(APP)
    env = dict(os.environ, BROKER=f"sqlite:///{tmp_path / 'm.db'}", PYTHONPATH=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "machinery", "worker", "--app", "promapp", "--metrics-port", bad],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "--metrics-port" in out.stderr


def test_grafana_dashboard_queries_only_metrics_the_plugin_exports() -> None:
    import json
    import re

    from machinery_prometheus import metrics

    dashboard = json.loads((Path(__file__).parents[1] / "grafana-dashboard.json").read_text())
    exported = {"machinery_tasks_total", "machinery_task_retries_total", "machinery_tasks_in_progress"}
    exported |= {f"{h._name}_bucket" for h in (metrics.RUNTIME, metrics.LATENCY)}
    exported.add("machinery_queue_depth")
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"machinery_\w+", t["expr"])}
    assert used and used <= exported, used - exported


def test_multiprocess_mode_sums_two_worker_processes(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    (tmp_path / "promapp.py").write_text(APP)
    mp = tmp_path / "prom"
    mp.mkdir()
    port = free_port()
    env = dict(os.environ, BROKER=f"sqlite:///{db}", RESULT_BACKEND=f"sqlite:///{db}", PROMETHEUS_MULTIPROC_DIR=str(mp))
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "machinery", "worker", "--app", "promapp", "-c", "1"]
    procs = [
        subprocess.Popen([*cmd, "--metrics-port", str(port)], env=env, stderr=subprocess.DEVNULL),
        subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL),
    ]
    server = Server(Config(broker=env["BROKER"], result_backend=env["RESULT_BACKEND"]))
    try:
        wait_scrape(port)
        results = [server.send_task(Signature("ok", args=[i])) for i in range(40)]
        for r in results:
            assert r.get(timeout=60) is not None
        deadline = time.monotonic() + 10
        while True:
            m = scrape(port)
            if m.get(("machinery_tasks_total", (("state", "SUCCESS"), ("task", "ok")))) == 40:
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.1)
        # both processes wrote samples to the shared directory
        assert len({f.name.split("_")[-1] for f in mp.glob("counter_*.db")}) == 2
    finally:
        server.close()
        for p in procs:
            p.terminate()
            p.wait(30)
