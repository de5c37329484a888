"""The embedded sqlite result backend and lock: Go JSON records, expiry, bulk reads, the
exactly-once chord trigger across threads and processes, blocking waits, and lock ownership."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from machinery import Config, Signature
from machinery.builtin.sqlite.backend import SQLiteBackend, SQLiteBackendError
from machinery.builtin.sqlite.lock import SQLiteLock
from machinery.signature import encode_task_state
from machinery.state import TaskResult, TaskState


@pytest.fixture
def make(db_path: Path) -> Iterator[Callable[..., SQLiteBackend]]:
    made: list[SQLiteBackend] = []

    def factory(**config: object) -> SQLiteBackend:
        b = SQLiteBackend(f"sqlite:///{db_path}", Config(**config))  # type: ignore[arg-type]
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()


def test_states_are_stored_as_go_json(
    make: Callable[..., SQLiteBackend], raw: Callable[..., list[tuple[object, ...]]]
) -> None:
    b = make()
    s = Signature("add", uuid="task_1")
    b.set_state_success(s, [TaskResult("int64", 3)])
    st = b.get_state("task_1")
    assert st is not None and st.is_success and st.values == [3]
    (data,) = raw("SELECT data FROM machinery_states WHERE uuid = 'task_1'")[0]
    assert isinstance(data, bytes) and data == encode_task_state(st)
    doc = json.loads(data)
    assert doc["State"] == "SUCCESS" and doc["Results"] == [{"Type": "int64", "Value": 3}]


def test_received_started_in_one_round_trip_keeps_the_last(make: Callable[..., SQLiteBackend]) -> None:
    b = make()
    s = Signature("add", uuid="task_rs")
    b.set_state_received_started(s)
    st = b.get_state("task_rs")
    assert st is not None and st.state == "STARTED"


def test_bulk_load_keeps_order_and_missing(make: Callable[..., SQLiteBackend]) -> None:
    b = make()
    uuids = [f"task_{i}" for i in range(1200)]
    b.set_states_pending([Signature("add", uuid=u) for u in uuids[::2]])
    got = b._load_states([*uuids, "task_0"])
    assert [g is not None for g in got[:4]] == [True, False, True, False]
    assert got[-1] is not None and got[-1].task_uuid == "task_0"
    assert len(got) == 1201


def test_results_expire(make: Callable[..., SQLiteBackend], raw: Callable[..., list[tuple[object, ...]]]) -> None:
    b = make(results_expire_in=1)
    b.set_state_pending(Signature("add", uuid="task_x"))
    b.init_group("group_x", ["task_x"])
    assert b.get_state("task_x") is not None and b.get_group_meta("group_x") is not None
    time.sleep(1.1)
    assert b.get_state("task_x") is None
    assert b.get_group_meta("group_x") is None
    assert b.trigger_chord("group_x") is False
    # The sweep deletes expired rows (at most once a minute; force it).
    b._db._last_sweep = 0.0
    b.set_state_pending(Signature("add", uuid="task_y"))
    assert raw("SELECT uuid FROM machinery_states") == [("task_y",)]


def test_no_expiry_when_minus_one_and_zero_is_gos_default(
    make: Callable[..., SQLiteBackend], raw: Callable[..., list[tuple[object, ...]]]
) -> None:
    """``results_expire_in: 0`` is Go's default 3600 s (``getExpiration`` in Go's backends);
    -1 keeps results forever (Python only)."""
    b = make(results_expire_in=-1)
    b.set_state_pending(Signature("add", uuid="task_keep"))
    assert raw("SELECT expires_at FROM machinery_states") == [(None,)]
    b = make(results_expire_in=0)
    now = time.time()
    b.set_state_pending(Signature("add", uuid="task_hour"))
    (expires,) = raw("SELECT expires_at FROM machinery_states WHERE uuid = 'task_hour'")[0]
    assert now + 3590 < expires < now + 3610
    # the stored TaskState's TTL field is 0, as Go's Redis/AMQP/memcache/Mongo backends write it
    st = b.get_state("task_hour")
    assert st is not None and st.ttl == 0


def test_chord_triggers_once_across_threads(make: Callable[..., SQLiteBackend]) -> None:
    b = make()
    b.init_group("group_t", ["a", "b"])
    wins: list[bool] = []
    barrier = threading.Barrier(16)

    def race() -> None:
        barrier.wait()
        wins.append(b.trigger_chord("group_t"))

    threads = [threading.Thread(target=race) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1
    meta = b.get_group_meta("group_t")
    assert meta is not None and meta.chord_triggered and meta.task_uuids == ["a", "b"]
    assert b.trigger_chord("unknown_group") is False


def test_concurrent_writers_share_connections(
    make: Callable[..., SQLiteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Threads queueing for the in-process write lock hold no connection (a worker's 8 task
    # threads used to open one each, about 250 kB apiece).
    b = make()
    b.set_state_pending(Signature("add", uuid="task_first"))  # the schema exists from here on
    db = b._db
    opened: list[int] = []
    connect = db._connect

    def counting_connect() -> sqlite3.Connection:
        opened.append(1)
        return connect()

    monkeypatch.setattr(db, "_connect", counting_connect)
    barrier = threading.Barrier(8)

    def writer(n: int) -> None:
        barrier.wait()
        for i in range(40):
            b.set_state_started(Signature("add", uuid=f"task_{n}_{i}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) <= 1, f"{len(opened)} connections opened by 8 writing threads"
    assert b.get_state("task_7_39") is not None


def test_chord_triggers_once_across_processes(make: Callable[..., SQLiteBackend], db_path: Path) -> None:
    b = make()
    b.init_group("group_p", ["a"])
    go = time.time() + 1.0
    code = textwrap.dedent(
        f"""
        import time
        from machinery import Config
        from machinery.builtin.sqlite.backend import SQLiteBackend
        b = SQLiteBackend({f"sqlite:///{db_path}"!r}, Config())
        b.get_group_meta("group_p")
        time.sleep(max(0.0, {go} - time.time()))
        print(b.trigger_chord("group_p"))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=30)[0].strip() for p in procs]
    assert sorted(outs) == ["False", "False", "False", "True"]


def test_delete_and_corrupt_records(make: Callable[..., SQLiteBackend], db_path: Path) -> None:
    b = make()
    b.set_state_pending(Signature("add", uuid="task_d"))
    b.init_group("group_d", ["task_d"])
    b.purge_state("task_d")
    b.purge_group_meta("group_d")
    b.purge_state("never_there")
    assert b.get_state("task_d") is None and b.get_group_meta("group_d") is None
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO machinery_states (uuid, data) VALUES ('task_bad', x'7b6e6f7065')")
    conn.commit()
    conn.close()
    with pytest.raises(SQLiteBackendError, match=r"task_bad") as info:
        b.get_state("task_bad")
    assert info.value.problem == "corrupt" and str(db_path) in str(info.value)


def test_wait_for_wakes_at_once_in_process(make: Callable[..., SQLiteBackend]) -> None:
    b = make()
    s = Signature("add", uuid="task_w")
    b.set_state_pending(s)
    threading.Timer(0.2, lambda: b.set_state_success(s, [TaskResult("int64", 1)])).start()
    t0 = time.monotonic()
    st = b.wait_for("task_w", timeout=5)
    waited = time.monotonic() - t0
    assert st is not None and st.is_success
    assert 0.15 < waited < 0.3
    t0 = time.monotonic()
    assert b.wait_for("task_none", timeout=0.2) is None
    assert time.monotonic() - t0 < 0.5


# -- lock -------------------------------------------------------------------------------------


@pytest.fixture
def locks(db_path: Path) -> Iterator[tuple[SQLiteLock, SQLiteLock]]:
    a = SQLiteLock(f"sqlite:///{db_path}", Config())
    b = SQLiteLock(f"sqlite:///{db_path}", Config())
    yield a, b
    a.close()
    b.close()


def test_lock_owner_and_expiry(
    locks: tuple[SQLiteLock, SQLiteLock], raw: Callable[..., list[tuple[object, ...]]]
) -> None:
    a, b = locks
    ttl = timedelta(seconds=0.4)
    assert a.acquire("k", ttl)
    assert a.acquire("k", ttl)  # the holder may re-take (and refresh) its own key
    assert not b.acquire("k", ttl)
    assert not b.release("k") and not b.extend("k", ttl)
    assert raw("SELECT owner FROM machinery_locks WHERE key = 'k'") == [(a.owner,)]
    assert a.extend("k", timedelta(seconds=0.6))
    time.sleep(0.45)
    assert not b.acquire("k", ttl)  # extended
    time.sleep(0.25)
    assert b.acquire("k", ttl)  # expired: taken over
    assert not a.release("k") and not a.extend("k", ttl)
    assert b.release("k")
    assert a.acquire("k", ttl)


def test_lock_is_exclusive_across_threads(locks: tuple[SQLiteLock, SQLiteLock]) -> None:
    a, b = locks
    barrier = threading.Barrier(2)
    results: list[bool] = []

    def grab(lock: SQLiteLock) -> None:
        barrier.wait()
        results.append(lock.acquire(f"tick-{datetime.now(timezone.utc):%H%M}", timedelta(seconds=5)))

    threads = [threading.Thread(target=grab, args=(x,)) for x in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]


def test_state_round_trip_of_every_field(make: Callable[..., SQLiteBackend]) -> None:
    b = make()
    st = TaskState(
        task_uuid="task_all",
        state="FAILURE",
        task_name="add",
        error="ValueError: <bad> & worse",
        created_at=datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=timezone.utc),
        ttl=3600,
    )
    b._store_state(st)
    assert b.get_state("task_all") == st


def test_a_new_database_file_is_private_and_an_existing_one_keeps_its_mode(tmp_path: Path) -> None:
    # issue 17: the file holds task arguments and results; -wal and -shm take the file's mode
    import os
    import stat

    from machinery.builtin.sqlite.backend import SQLiteBackend as _Backend

    def modes(db: Path) -> dict[str, int]:
        return {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir() if p.name.startswith(db.name)}

    new = tmp_path / "new" / "m.db"
    backend = _Backend(f"sqlite:///{new}", Config())
    backend.set_state_pending(Signature("add", uuid="task_1"))
    assert set(modes(new)) == {"m.db", "m.db-wal", "m.db-shm"}
    assert set(modes(new).values()) == {0o600}, modes(new)
    backend.close()

    shared = tmp_path / "shared.db"
    shared.touch()
    os.chmod(shared, 0o640)
    backend = _Backend(f"sqlite:///{shared}", Config())
    backend.set_state_pending(Signature("add", uuid="task_2"))
    assert set(modes(shared).values()) == {0o640}, modes(shared)
    backend.close()
