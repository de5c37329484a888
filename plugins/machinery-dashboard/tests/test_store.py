"""The event stores on the real servers: sqlite:// (a file) and Redis."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery_dashboard.store import Change, EventStore, RedisStore, SQLiteStore

REDIS_URL = os.environ.get("MACHINERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    if request.param == "sqlite":
        s: EventStore = SQLiteStore(str(tmp_path / "d.db"), retention=3600, max_tasks=50)
        yield s
        s.close()
        return
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not running at {REDIS_URL}: {exc} (scripts/start-services starts it)")
    prefix = "machinery:dashboard:{d}:"
    for k in client.scan_iter(match=prefix + "*"):
        client.delete(k)
    yield RedisStore(client, retention=3600, max_tasks=50)
    for k in client.scan_iter(match=prefix + "*"):
        client.delete(k)


def _lifecycle(u: str, t: float, *, name: str = "add", fail: bool = False) -> list[Change]:
    return [
        Change(u, "RECEIVED", t, name=name, queue="q1", worker="w1", received=t, signature=b'{"UUID":"x"}',
               children=(u + "-next",)),
        Change(u, "STARTED", t + 0.1, started=t + 0.1),
        Change(u, "RETRY", t + 0.2, retried=1, error="boom"),
        Change(u, "FAILURE", t + 0.3, finished=t + 0.3, error="ValueError: bad", traceback="Traceback...")
        if fail
        else Change(u, "SUCCESS", t + 0.3, finished=t + 0.3, runtime=0.2, results='[{"type":"int64","value":3}]'),
    ]


def test_records_merge_events_in_order(store: EventStore) -> None:
    u = "task_" + uuid.uuid4().hex
    t = time.time()
    store.write(_lifecycle(u, t), {(int(t // 60), "SUCCESS"): 1, (int(t // 60), "RECEIVED"): 1})
    rec = store.get(u)
    assert rec is not None
    assert (rec.state, rec.name, rec.queue, rec.worker, rec.retries) == ("SUCCESS", "add", "q1", "w1", 1)
    assert rec.received == pytest.approx(t) and rec.finished == pytest.approx(t + 0.3)
    assert rec.error == "boom"  # kept from the retry: a later change without error does not erase it
    assert rec.results == '[{"type":"int64","value":3}]'
    assert bytes(rec.signature or b"") == b'{"UUID":"x"}'
    assert [line.split()[1] for line in rec.history.splitlines()] == ["RECEIVED", "STARTED", "RETRY", "SUCCESS"]
    assert store.parent_of(u + "-next") == u and store.parent_of(u) == ""
    counts = store.counts(int(t // 60))
    assert counts[int(t // 60)]["SUCCESS"] == 1


def test_recent_filters_and_changes(store: EventStore) -> None:
    t = time.time()
    uuids = ["task_" + uuid.uuid4().hex for _ in range(6)]
    for i, u in enumerate(uuids):
        store.write(_lifecycle(u, t + i, name="a" if i % 2 else "b", fail=i == 3), {})
    assert [r.uuid for r in store.recent(10)] == uuids[::-1]
    assert [r.uuid for r in store.recent(10, state="FAILURE")] == [uuids[3]]
    assert [r.uuid for r in store.recent(10, name="a")] == [uuids[5], uuids[3], uuids[1]]
    assert store.recent(10, queue="other") == []
    assert [r.uuid for r in store.recent(2)] == [uuids[5], uuids[4]]
    changed, cursor = store.changed_since(t + 2.5)  # record i last changed at t + i + 0.3
    assert [c["uuid"] for c in changed] == uuids[3:]
    assert changed[0]["state"] == "FAILURE"
    assert store.changed_since(cursor) == ([], cursor)


def test_trim_caps_and_expires(store: EventStore) -> None:
    t = time.time()
    old = "task_old_" + uuid.uuid4().hex
    store.write([Change(old, "SUCCESS", t - 7200, name="x")], {})
    fresh = ["task_" + uuid.uuid4().hex for _ in range(60)]
    store.write([Change(u, "SUCCESS", t + i * 0.001, name="x") for i, u in enumerate(fresh)], {})
    store.trim(time.time())
    assert store.get(old) is None
    assert store.total() == 50
    kept = {r.uuid for r in store.recent(100)}
    assert kept == set(fresh[10:])
