"""100,000 recorded tasks: how fast the dashboard reads them from the event log (sqlite:// and
Redis), and that every page then answers in under 300 ms.

The figures (ingest rate; best of 3 per page, in ms) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery import Config, Server
from machinery.events import TaskEvent
from machinery.signature import Signature
from machinery_dashboard.app import Dashboard
from machinery_dashboard.ingest import Ingester
from machinery_dashboard.log import BATCH_EVENTS, REDIS_LOG_KEY, EventLog, RedisLog, SQLiteLog
from machinery_dashboard.recorder import encode_event

N = 100_000
LIMIT = 0.300
REDIS_URL = os.environ.get("MACHINERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def fill(event_log: EventLog) -> str:
    """N tasks' events (succeeded, or failed for one in ten; groups of 10), in batches as
    workers append them."""
    now = time.time()
    batch: list[list[object]] = []
    last = ""
    for i in range(N):
        u = f"task_scale_{i:06d}"
        sig = Signature("add" if i % 10 else "explode", args=[i, 1], uuid=u, group_uuid=f"group_{i // 10}")
        t = now - (N - i) * 0.01
        kind = "F" if i % 10 == 0 else "S"
        batch.append(encode_event(kind, TaskEvent(sig, "w1", error="boom" if kind == "F" else "", runtime=0.001), t))
        if len(batch) >= BATCH_EVENTS:
            event_log.append(json.dumps(batch).encode(), len(batch))
            batch = []
        last = u
    if batch:
        event_log.append(json.dumps(batch).encode(), len(batch))
    return last


@pytest.fixture(params=["sqlite", "redis"])
def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    big = {"retention": 3600, "max_events": 10 * N}
    if request.param == "sqlite":
        yield SQLiteLog(str(tmp_path / "scale.db"), **big)  # type: ignore[arg-type]
        return
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(REDIS_LOG_KEY)
    try:
        yield RedisLog(client, **big)  # type: ignore[arg-type]
    finally:
        client.delete(REDIS_LOG_KEY)


def test_pages_over_100k_tasks(event_log: EventLog, tmp_path: Path) -> None:
    last = fill(event_log)
    url = f"sqlite:///{tmp_path / 'scale.db'}"
    server = Server(Config(broker=url, result_backend=url))
    dash = Dashboard(server, index_path=str(tmp_path / "index.db"))
    assert dash.store is not None
    dash.log, dash.ingester = event_log, Ingester(event_log, dash.store)
    t0 = time.perf_counter()
    while dash.ingester.step():
        pass
    ingest = time.perf_counter() - t0
    assert dash.ingester.ingested == N and dash.store.total() == N
    httpd = dash.serve("127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    figures: dict[str, float] = {}
    try:
        for path in ("/", "/tasks", "/tasks?state=FAILURE", "/tasks?name=explode&limit=500", "/tasks?name=nothing",
                     f"/task/{last}", f"/api/workflow/{last}", f"/tasks?q={last}", "/tasks?minutes=5&state=SUCCESS"):
            best = float("inf")
            for _ in range(3):
                t1 = time.perf_counter()
                with urllib.request.urlopen(base + path, timeout=30) as r:
                    body = r.read()
                best = min(best, time.perf_counter() - t1)
            assert body
            figures[path] = best
    finally:
        httpd.shutdown()
        dash.close()
        server.close()
    print(f"\n{type(event_log).__name__}: {N:,} tasks read into the index in {ingest:.1f} s "
          f"({N / ingest:,.0f} tasks/s); pages, best of 3:")
    for path, secs in figures.items():
        print(f"  {secs * 1000:7.1f} ms  {path}")
    slow = {p: s for p, s in figures.items() if s >= LIMIT}
    assert not slow, f"pages slower than {LIMIT * 1000:.0f} ms: {slow}"
