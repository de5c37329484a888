"""The event log on the real stores (a sqlite:// file, the Redis server), the merge of events
and the dashboard's index."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from machinery import Signature
from machinery.events import TaskEvent
from machinery.state import TaskResult
from machinery_dashboard.ingest import Ingester, merge
from machinery_dashboard.log import REDIS_LOG_KEY, EventLog, RedisLog, SQLiteLog
from machinery_dashboard.recorder import Recorder, encode_event
from machinery_dashboard.store import Change, SQLiteStore

REDIS_URL = os.environ.get("MACHINERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "index.db"), retention=3600, max_tasks=50)
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "redis"])
def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    if request.param == "sqlite":
        s: EventLog = SQLiteLog(str(tmp_path / "backend.db"), retention=3600, max_events=1000)
        yield s
        s.close()
        return
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not running at {REDIS_URL}: {exc} (scripts/start-services starts it)")
    client.delete(REDIS_LOG_KEY)
    yield RedisLog(client, retention=3600, max_events=1000)
    client.delete(REDIS_LOG_KEY)


def _events(u: str, t: float, *, name: str = "add", fail: bool = False) -> list[list[Any]]:
    """A task's events as a worker encodes them: a retry at t + 0.2, the outcome at t + 0.3."""
    sig = Signature(name, args=[1, 2], uuid=u, routing_key="q1", on_success=[Signature("next", uuid=u + "-next")])
    last = (
        encode_event("F", TaskEvent(sig, "w1", error="ValueError: bad", traceback="Traceback..."), t + 0.3)
        if fail
        else encode_event("S", TaskEvent(sig, "w1", results=[TaskResult("int64", 3)], runtime=0.2), t + 0.3)
    )
    retry = encode_event("Y", TaskEvent(sig, "w1", error="boom", runtime=0.1), t + 0.2)
    return json.loads(json.dumps([retry, last]))


def test_merge_and_index(index: SQLiteStore) -> None:
    u = "task_" + uuid.uuid4().hex
    t = time.time()
    changes, counts = merge(_events(u, t))
    assert len(changes) == 1 and counts[(int((t + 0.3) // 60), "SUCCESS")] == 1  # two events, one change
    index.write(changes, counts, cursor="7")
    assert index.cursor() == "7"
    rec = index.get(u)
    assert rec is not None
    assert (rec.state, rec.name, rec.queue, rec.worker, rec.retries) == ("SUCCESS", "add", "q1", "w1", 1)
    assert rec.started == pytest.approx(t + 0.1)  # the outcome minus the run time
    assert rec.finished == pytest.approx(t + 0.3)
    assert rec.error == "boom"  # kept from the retry: a later change without error does not erase it
    assert json.loads(rec.results) == [["int64", 3]]
    doc = json.loads(rec.signature or "")
    assert doc["args"] == [["", "int64", 1], ["", "int64", 2]] and doc["next"] == [[u + "-next", "next", "next"]]
    assert [line.split()[1] for line in rec.history.splitlines()] == ["RETRY", "SUCCESS"]
    assert index.parent_of(u + "-next") == u and index.parent_of(u) == ""
    # a later batch: appended to the history, retries added up, the state replaced, the rest kept
    index.write([Change(u, "RETRY", t + 1, retried=2, history=f"{t + 1:.3f} RETRY w2\n", worker="w2")], {})
    rec = index.get(u)
    assert rec is not None and (rec.state, rec.retries, rec.worker, rec.name) == ("RETRY", 3, "w2", "add")
    assert rec.history.splitlines()[-1].split()[1:] == ["RETRY", "w2"]
    # malformed events are skipped, not fatal
    assert merge([["Z", 1, "w", "x"], ["S"], ["S", 1, "w", "u"], "junk"])[0] == []  # type: ignore[list-item]


def test_recent_filters_and_changes(index: SQLiteStore) -> None:
    t = time.time()
    uuids = ["task_" + uuid.uuid4().hex for _ in range(6)]
    for i, u in enumerate(uuids):
        index.write(merge(_events(u, t + i, name="a" if i % 2 else "b", fail=i == 3))[0], {})
    assert [r.uuid for r in index.recent(10)] == uuids[::-1]
    assert [r.uuid for r in index.recent(10, state="FAILURE")] == [uuids[3]]
    assert [r.uuid for r in index.recent(10, name="a")] == [uuids[5], uuids[3], uuids[1]]
    assert index.recent(10, queue="other") == []
    assert [r.uuid for r in index.recent(2)] == [uuids[5], uuids[4]]
    changed, cursor = index.changed_since(t + 2.5)  # record i last changed at t + i + 0.3
    assert [c["uuid"] for c in changed] == uuids[3:]
    assert changed[0]["state"] == "FAILURE"
    assert index.changed_since(cursor) == ([], cursor)


def test_index_trim_caps_and_expires(index: SQLiteStore) -> None:
    t = time.time()
    old = "task_old_" + uuid.uuid4().hex
    index.write([Change(old, "SUCCESS", t - 7200, name="x")], {})
    # ``updated`` is the write time: age the old record as a write two hours ago would have
    index._conn().execute("UPDATE machinery_dashboard_tasks SET updated = ? WHERE uuid = ?", (t - 7200, old))
    fresh = ["task_" + uuid.uuid4().hex for _ in range(60)]
    index.write([Change(u, "SUCCESS", t + i * 0.001, name="x") for i, u in enumerate(fresh)], {})
    index.trim(time.time())
    assert index.get(old) is None
    assert index.total() == 50
    assert {r.uuid for r in index.recent(100)} == set(fresh[10:])


def test_log_append_read_trim(event_log: EventLog) -> None:
    for i in range(5):
        event_log.append(json.dumps([["S", i, "w", f"u{i}", 0.1, []]]).encode(), 1)
    got = event_log.read("")
    assert [json.loads(d)[0][3] for _, d in got] == ["u0", "u1", "u2", "u3", "u4"]
    assert [json.loads(d)[0][3] for _, d in event_log.read(got[1][0], 2)] == ["u2", "u3"]
    assert event_log.read(got[-1][0]) == []
    assert not event_log.behind(got[0][0])
    event_log.trim(time.time() + 7200)  # everything is older than the retention then
    assert event_log.read("") == []


def test_sqlite_log_cap_counts_events(tmp_path: Path) -> None:
    event_log = SQLiteLog(str(tmp_path / "b.db"), retention=3600, max_events=10)
    for i in range(6):
        event_log.append(json.dumps([["S", i, "w", f"u{i}-{k}", 0, []] for k in range(3)]).encode(), 3)
    event_log.trim(time.time())
    kept = event_log.read("")
    assert len(kept) == 3  # 9 events; a fourth batch would make 12 > 10
    assert event_log.behind("0")
    event_log.close()


def test_recorder_to_index_through_the_log(event_log: EventLog, tmp_path: Path) -> None:
    index = SQLiteStore(str(tmp_path / "big-index.db"), retention=3600, max_tasks=10_000)
    rec = Recorder(event_log)
    sigs = [Signature("add", args=[i], uuid=f"task_{uuid.uuid4().hex}") for i in range(1200)]
    for s in sigs:
        rec.task_event("Y", TaskEvent(s, "w8", error="again", runtime=0.01))
        rec.task_event("S", TaskEvent(s, "w9", results=[TaskResult("int64", 1)], runtime=0.01))
    n = 0
    while (k := rec.flush()):
        assert k <= 500
        n += k
    assert n == 2400
    ing = Ingester(event_log, index)
    while ing.step():
        pass
    assert ing.ingested == 2400
    assert index.total() == 1200
    last = index.get(sigs[-1].uuid)
    assert last is not None and (last.state, last.worker, last.retries) == ("SUCCESS", "w9", 1)
