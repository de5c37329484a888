"""A page over 100,000 recorded tasks answers in under 300 ms (sqlite:// and Redis).

The figures (best of 3 per page, seconds) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from machinery import Config, Server
from machinery.signature import Signature, encode_signature
from machinery_dashboard.app import Dashboard
from machinery_dashboard.store import Change, EventStore, RedisStore, SQLiteStore

N = 100_000
LIMIT = 0.300
REDIS_URL = os.environ.get("MACHINERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def fill(store: EventStore) -> str:
    """N tasks (a tenth failed, in groups of 10), written as a worker would: in batches."""
    now = time.time()
    batch: list[Change] = []
    last = ""
    for i in range(N):
        u = f"task_scale_{i:06d}"
        sig = Signature("add" if i % 10 else "explode", args=[i, 1], uuid=u, group_uuid=f"group_{i // 10}")
        t = now - (N - i) * 0.01
        state = "FAILURE" if i % 10 == 0 else "SUCCESS"
        batch.append(Change(u, state, t, name=sig.name, queue="machinery_tasks", worker="w1", group_uuid=sig.group_uuid,
                            received=t, started=t, finished=t, runtime=0.001, signature=encode_signature(sig),
                            error="boom" if state == "FAILURE" else None))
        if len(batch) == 5000:
            store.write(batch, {(int(t // 60), state): 5000})
            batch = []
        last = u
    if batch:
        store.write(batch, {})
    return last


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, EventStore]]:
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'scale.db'}"
        yield db, SQLiteStore(str(tmp_path / "scale.db"))
        return
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    prefix = "machinery:dashboard:{d}:"

    def clean() -> None:
        keys = list(client.scan_iter(match=prefix + "*", count=5000))
        for i in range(0, len(keys), 5000):
            client.delete(*keys[i : i + 5000])

    clean()
    try:
        yield f"sqlite:///{tmp_path / 'scale.db'}", RedisStore(client)
    finally:
        clean()


def test_pages_over_100k_tasks(store: tuple[str, EventStore]) -> None:
    url, st = store
    last = fill(st)
    assert st.total() == N
    server = Server(Config(broker=url, result_backend=url))
    dash = Dashboard(server)
    dash.store = st  # the filled store (the Redis one, or this file's)
    httpd = dash.serve("127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    figures: dict[str, float] = {}
    try:
        for path in ("/", "/tasks", "/tasks?state=FAILURE", "/tasks?name=explode&limit=500", "/tasks?name=nothing",
                     f"/task/{last}", f"/api/workflow/{last}", f"/tasks?q={last}"):
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                with urllib.request.urlopen(base + path, timeout=30) as r:
                    body: Any = r.read()
                best = min(best, time.perf_counter() - t0)
            assert body
            figures[path] = best
    finally:
        httpd.shutdown()
        dash.close()
        server.close()
    print(f"\n{type(st).__name__}, {N:,} tasks:")
    for path, secs in figures.items():
        print(f"  {secs * 1000:7.1f} ms  {path}")
    slow = {p: s for p, s in figures.items() if s >= LIMIT}
    assert not slow, f"pages slower than {LIMIT * 1000:.0f} ms: {slow}"
