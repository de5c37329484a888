"""Failures of the database file: each becomes a clear machinery error naming the file, and a
worker rides out a locked database without losing results."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from machinery import Arg, BackendError, BrokerError, Config, Server, Signature
from machinery.default._db import SQLiteBackendError, SQLiteBrokerError, SQLiteLockError
from machinery.default.backend import SQLiteBackend
from machinery.default.broker import SQLiteBroker
from machinery.default.lock import SQLiteLock
from machinery.errors import LockError
from machinery.signature import encode_signature


def publish(broker: SQLiteBroker, value: int = 1, body_size: int = 0) -> None:
    s = Signature("add", args=[Arg("int64", value)], routing_key="q", headers={"pad": "x" * body_size})
    broker.publish(encode_signature(s), s)


def test_corrupted_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a sqlite database at all" * 200)
    broker = SQLiteBroker(f"sqlite:///{path}", Config())
    with pytest.raises(SQLiteBrokerError) as info:
        publish(broker)
    err = info.value
    assert isinstance(err, BrokerError)
    assert err.problem == "corrupt" and err.path == str(path)
    assert str(path) in str(err) and "corrupted" in str(err)
    backend = SQLiteBackend(f"sqlite:///{path}", Config())
    with pytest.raises(SQLiteBackendError) as binfo:
        backend.get_state("task_x")
    assert isinstance(binfo.value, BackendError) and binfo.value.problem == "corrupt"
    lock = SQLiteLock(f"sqlite:///{path}", Config())
    with pytest.raises(SQLiteLockError) as linfo:
        lock.release("k")
    assert isinstance(linfo.value, LockError)
    assert path.read_bytes().startswith(b"this is not")  # left untouched


def test_locked_beyond_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    broker = SQLiteBroker(f"sqlite:///{path}?busy_timeout=0.2", Config())
    publish(broker)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        with pytest.raises(SQLiteBrokerError) as info:
            publish(broker)
        assert 0.15 < time.monotonic() - t0 < 2
        assert info.value.problem == "locked"
        assert "busy_timeout=0.2s" in str(info.value) and str(path) in str(info.value)
        assert len(broker.pending_tasks("q")) == 1  # readers are not blocked in WAL mode
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    publish(broker)
    assert len(broker.pending_tasks("q")) == 2
    broker.close()


def test_read_only_database(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path / 'ro.db'}", Config())
    publish(broker)
    conn = broker._db.checkout()
    conn.execute("PRAGMA query_only = 1")  # what SQLite reports for a read-only file or mount
    broker._db.checkin(conn)
    with pytest.raises(SQLiteBrokerError) as info:
        publish(broker)
    assert info.value.problem == "read-only" and "read-only" in str(info.value)
    publish(broker)  # the failed connection was dropped; a fresh one works
    assert len(broker.pending_tasks("q")) == 2
    broker.close()


def test_unwritable_directory() -> None:
    broker = SQLiteBroker("sqlite:////proc/machinery-no-such-dir/q.db", Config())
    with pytest.raises(SQLiteBrokerError) as info:
        publish(broker)
    assert info.value.problem == "cannot-open" and "/proc/machinery-no-such-dir/q.db" in str(info.value)


def test_full_disk(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'full.db'}", Config())
    backend.set_state_pending(Signature("add", uuid="task_before"))
    conn = backend._db.checkout()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: as on a full disk
    backend._db.checkin(conn)
    big = Signature("x" * 200_000, uuid="task_big")
    with pytest.raises(SQLiteBackendError) as info:
        backend.set_state_pending(big)
    assert info.value.problem == "disk-full"
    state = backend.get_state("task_before")
    assert state is not None and state.state == "PENDING"  # what was stored is kept
    backend.close()


def test_worker_rides_out_a_locked_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    cfg = Config(
        broker=url,
        result_backend=url,
        no_unix_signals=True,
        transport_options={"sqlite": {"busy_timeout": 0.2, "visibility_timeout": 1.5}},
    )
    server = Server(cfg)

    @server.task("add")
    def add(*n: int) -> int:
        time.sleep(0.05)
        return sum(n)

    results = [server.send_task(Signature("add", args=[Arg("int64", i), Arg("int64", 1)])) for i in range(20)]
    holder = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    worker = server.new_worker(concurrency=4).launch_in_background()
    time.sleep(0.2)
    holder.execute("BEGIN EXCLUSIVE")  # another process hogs the write lock for a while
    time.sleep(1.5)
    holder.execute("ROLLBACK")
    holder.close()
    try:
        assert [r.get(timeout=20) for r in results] == [i + 1 for i in range(20)]
        assert worker.running
    finally:
        worker.quit(timeout=10)
        server.close()


def test_heartbeat_survives_a_locked_database(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "hb.db"
    broker = SQLiteBroker(f"sqlite:///{path}?busy_timeout=0.05&visibility_timeout=0.6", Config())
    publish(broker)
    stop = threading.Event()
    it = broker.consume("q", prefetch=1, stop=stop)
    delivery = next(it)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    time.sleep(0.3)  # one renewal fails while locked...
    holder.execute("ROLLBACK")
    holder.close()
    time.sleep(0.5)  # ...and the next one succeeds
    assert broker.pending_tasks("q") == []
    broker.ack(delivery)
    it.close()  # type: ignore[attr-defined]
    broker.close()
    assert any("locked" in r.getMessage() for r in caplog.records)
