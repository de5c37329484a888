"""The embedded transport's group commit (:mod:`machinery.builtin.sqlite._commit`): what each
transaction runs, seen through SQLite's own trace of the statements it executes."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from machinery import Config, Signature
from machinery.builtin.sqlite._commit import Write, plan
from machinery.builtin.sqlite._db import Database
from machinery.builtin.sqlite.backend import SQLiteBackend, SQLiteBackendError
from machinery.builtin.sqlite.broker import SQLiteBroker, SQLiteBrokerError
from machinery.interfaces import Delivery
from machinery.state import TaskResult

Raw = Callable[..., list[tuple[object, ...]]]


class _Role:
    def _translated(self, exc: sqlite3.Error, op: str) -> Exception:
        return RuntimeError(f"{op}: {exc}")


def _w(sql: str, table: str, *rows: tuple[object, ...], key: int | None = None) -> Write:
    return Write(sql, list(rows), frozenset({table}), key, _Role(), "test")


def test_plan_merges_a_statement_across_other_tables_and_keeps_the_last_row_of_a_key() -> None:
    up, ack, drop = "UPSERT state", "DELETE message", "DELETE state"
    writes = [
        _w(up, "states", ("a", "RECEIVED"), ("a", "STARTED"), key=0),
        _w(ack, "messages", (1,)),
        _w(up, "states", ("b", "STARTED"), key=0),
        _w(up, "states", ("a", "SUCCESS"), key=0),
        _w(ack, "messages", (2,)),
        _w(drop, "states", ("b",)),  # touches the states: a later upsert may not move before it
        _w(up, "states", ("b", "PENDING"), key=0),
        _w(ack, "messages", (3,)),
    ]
    assert list(plan(writes)) == [
        (up, [("b", "STARTED"), ("a", "SUCCESS")]),
        (ack, [(1,), (2,), (3,)]),
        (drop, [("b",)]),
        (up, [("b", "PENDING")]),
    ]


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement any new connection of the transport runs, in order."""
    seen: list[str] = []
    connect = Database._connect

    def tracing(self: Database) -> sqlite3.Connection:
        conn = connect(self)
        conn.set_trace_callback(seen.append)
        return conn

    monkeypatch.setattr(Database, "_connect", tracing)
    return seen


@pytest.fixture
def roles(db_path: Path) -> Iterator[tuple[SQLiteBroker, SQLiteBackend]]:
    url = f"sqlite:///{db_path}"
    config = Config(broker=url, result_backend=url)
    broker, backend = SQLiteBroker(url, config), SQLiteBackend(url, config)
    assert broker._db is backend._db  # one transport, one database handle, one group commit
    yield broker, backend
    broker.close()
    backend.close()


def _written(seen: list[str]) -> list[str]:
    keep = ("BEGIN", "COMMIT", "INSERT INTO machinery_states", "DELETE FROM machinery_messages")
    return [
        s.split(" (", 1)[0] if s.startswith("INSERT") else s.split(" WHERE", 1)[0] for s in seen if s.startswith(keep)
    ]


def _await_leader(db: Database) -> None:
    """Wait until a thread leads the group commit (it is held at the write lock the test holds)."""
    deadline = time.monotonic() + 5
    while db._leader is None:
        assert time.monotonic() < deadline, "no thread took the lead"
        time.sleep(0.001)


def _delivery(broker: SQLiteBroker) -> Delivery:
    (got,) = broker._fetch(broker.default_queue, 1, 0)
    return got


def test_an_uncontended_write_is_committed_at_once_in_a_transaction_of_its_own(
    roles: tuple[SQLiteBroker, SQLiteBackend], traced: list[str]
) -> None:
    _, backend = roles
    backend.set_state_pending(Signature("add", uuid="task_a"))
    traced.clear()
    done = backend.set_state_success(Signature("add", uuid="task_a"), [TaskResult("int64", 1)], wait=False)
    assert done.done() and done.exception() is None  # nobody else committing: done on this thread
    assert _written(traced) == ["INSERT INTO machinery_states"]  # one row: autocommit, no BEGIN
    state = backend.get_state("task_a")
    assert state is not None and state.is_success


def test_writes_queued_while_another_thread_commits_share_its_next_transaction(
    roles: tuple[SQLiteBroker, SQLiteBackend], traced: list[str], raw: Raw
) -> None:
    broker, backend = roles
    for n in (1, 2):
        broker.publish(b'{"UUID": "m"}', Signature("add", uuid=f"msg_{n}"))
    first, second = _delivery(broker), _delivery(broker)
    db = backend._db
    db._last_sweep = float("inf")  # no expiry sweep after the leader's store
    db._write_lock.acquire()  # the leader's commit is held here until released
    leader = threading.Thread(target=backend.set_state_pending, args=(Signature("add", uuid="task_lead"),))
    leader.start()
    _await_leader(db)
    traced.clear()
    sig_b, sig_c = Signature("add", uuid="task_b"), Signature("add", uuid="task_c")
    backend.set_state_received_started(sig_b)  # deferred, logged if it fails
    broker.ack(first)
    backend.set_state_received_started(sig_c)
    done_b = backend.set_state_success(sig_b, [TaskResult("int64", 2)], wait=False)
    broker.ack(second)
    assert not done_b.done() and traced == []  # queued: nothing ran, nothing waited
    db._write_lock.release()
    leader.join(5)
    assert done_b.exception(5) is None
    # the leader's own write alone, then one transaction for all that queued meanwhile: task_b's
    # RECEIVED/STARTED replaced by its SUCCESS before being written, the acks in one statement
    assert _written(traced) == [
        "INSERT INTO machinery_states",
        "BEGIN IMMEDIATE",
        "INSERT INTO machinery_states",
        "INSERT INTO machinery_states",
        "DELETE FROM machinery_messages",
        "DELETE FROM machinery_messages",
        "COMMIT",
    ]
    rows = dict(raw("SELECT uuid, json_extract(data, '$.State') FROM machinery_states"))
    assert rows == {"task_lead": "PENDING", "task_b": "SUCCESS", "task_c": "STARTED"}
    assert raw("SELECT count(*) FROM machinery_messages") == [(0,)]


def test_a_claim_made_while_another_thread_commits_goes_into_its_next_transaction(
    roles: tuple[SQLiteBroker, SQLiteBackend], traced: list[str], raw: Raw
) -> None:
    broker, backend = roles
    for n in range(3):
        broker.publish(b'{"UUID": "m"}', Signature("add", uuid=f"msg_{n}"))
    first = _delivery(broker)
    db = backend._db
    db._last_sweep = float("inf")
    db._write_lock.acquire()
    leader = threading.Thread(target=backend.set_state_pending, args=(Signature("add", uuid="task_lead"),))
    leader.start()
    _await_leader(db)
    traced.clear()
    broker.ack(first)  # queued
    claimed: list[Delivery] = []
    claimer = threading.Thread(target=lambda: claimed.extend(broker._claim(broker.default_queue, 5)))
    claimer.start()
    deadline = time.monotonic() + 5
    while len(db._waiting) < 2:  # the claim waits in the list behind the ack
        assert time.monotonic() < deadline
        time.sleep(0.001)
    db._write_lock.release()
    leader.join(5)
    claimer.join(5)
    assert [d.tag[0] for d in claimed] == [2, 3]
    statements = [s.split(" ", 2)[:2] for s in traced if not s.startswith("INSERT INTO machinery_states")]
    assert statements == [
        ["BEGIN", "IMMEDIATE"],
        ["DELETE", "FROM"],  # the acknowledgement,
        ["UPDATE", "machinery_messages"],  # the promotion of due messages and the claim,
        ["UPDATE", "machinery_messages"],
        ["COMMIT"],  # one transaction
    ]
    assert raw("SELECT id, state FROM machinery_messages ORDER BY id") == [(2, 2), (3, 2)]


def test_a_failed_transaction_fails_every_write_in_it_and_acknowledges_nothing(
    roles: tuple[SQLiteBroker, SQLiteBackend], raw: Raw, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, backend = roles
    broker.publish(b'{"UUID": "m"}', Signature("add", uuid="msg"))
    delivery = _delivery(broker)
    db = backend._db
    db.close()  # the pool's connections refuse writes from now on
    connect = Database._connect

    def read_only(self: Database) -> sqlite3.Connection:
        conn = connect(self)
        conn.execute("PRAGMA query_only = ON")
        return conn

    monkeypatch.setattr(Database, "_connect", read_only)
    db._write_lock.acquire()
    refused: list[BaseException] = []

    def lead() -> None:
        try:
            backend.set_state_pending(Signature("add", uuid="task_x"))
        except SQLiteBackendError as exc:
            refused.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    _await_leader(db)
    done = backend.set_state_success(Signature("add", uuid="task_f"), [], wait=False)
    acked: list[BaseException | None] = []
    acks = db.submit(
        "DELETE FROM machinery_messages WHERE id = ?",
        [(delivery.tag[0],)],
        broker,
        "ack",
        tables=frozenset({"machinery_messages"}),
        wait=False,
    )
    acks.add_done_callback(acked.append)
    db._write_lock.release()
    leader.join(5)
    error = done.exception(5)
    assert refused and isinstance(error, SQLiteBackendError) and error.operation == "store states"
    assert isinstance(acked[0], SQLiteBrokerError) and acked[0].operation == "ack"
    assert raw("SELECT count(*) FROM machinery_messages") == [(1,)]  # still leased: comes back
    assert raw("SELECT count(*) FROM machinery_states WHERE uuid = 'task_f'") == [(0,)]


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"), reason="Connection.setlimit needs Python 3.11")
def test_a_row_too_big_fails_alone_and_the_rest_of_its_round_is_stored(
    roles: tuple[SQLiteBroker, SQLiteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, backend = roles
    db = backend._db
    backend.set_state_pending(Signature("add", uuid="task_0"))  # the schema exists
    db.close()
    connect = Database._connect

    def small_values(self: Database) -> sqlite3.Connection:
        conn = connect(self)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 20_000)
        return conn

    monkeypatch.setattr(Database, "_connect", small_values)
    db._write_lock.acquire()
    leader = threading.Thread(target=backend.set_state_pending, args=(Signature("add", uuid="task_1"),))
    leader.start()
    _await_leader(db)
    small = backend.set_state_success(Signature("add", uuid="task_2"), [TaskResult("int64", 2)], wait=False)
    big = backend.set_state_success(Signature("add", uuid="task_3"), [TaskResult("string", "x" * 50_000)], wait=False)
    after = backend.set_state_success(Signature("add", uuid="task_4"), [TaskResult("int64", 4)], wait=False)
    db._write_lock.release()
    leader.join(5)
    error = big.exception(5)
    assert isinstance(error, SQLiteBackendError) and error.problem == "too-big"
    assert small.exception(5) is None and after.exception(5) is None
    states = [backend.get_state(f"task_{n}") for n in range(1, 5)]
    assert [s.state if s else None for s in states] == ["PENDING", "SUCCESS", None, "SUCCESS"]


def test_a_waited_write_from_a_completion_callback_on_the_committing_thread_does_not_wait_for_itself(
    roles: tuple[SQLiteBroker, SQLiteBackend],
) -> None:
    _, backend = roles
    db = backend._db
    ran: list[bool] = []

    def then_store_another(error: BaseException | None) -> None:
        ran.append(db._leader == threading.get_ident())  # resolved by the thread that committed it
        backend.set_state_success(Signature("add", uuid="task_next"), [])  # waits for its commit

    db._write_lock.acquire()
    leader = threading.Thread(target=backend.set_state_pending, args=(Signature("add", uuid="task_lead"),))
    leader.start()
    _await_leader(db)
    done = backend.set_state_success(Signature("add", uuid="task_first"), [], wait=False)
    done.add_done_callback(then_store_another)
    db._write_lock.release()
    leader.join(5)
    assert not leader.is_alive() and ran == [True]  # it ran there, and did not wait for itself
    states = [backend.get_state(u) for u in ("task_lead", "task_first", "task_next")]
    assert [s.state if s else None for s in states] == ["PENDING", "SUCCESS", "SUCCESS"]
    assert db._leader is None and db._waiting == []


def test_a_write_that_raises_fails_its_round_and_the_leader_goes_on(
    roles: tuple[SQLiteBroker, SQLiteBackend], raw: Raw
) -> None:
    _, backend = roles
    db = backend._db
    db._write_lock.acquire()
    raised: list[BaseException] = []

    def lead() -> None:
        try:
            backend.set_state_pending(Signature("add", uuid="task_lead"))
        except BaseException as exc:  # asserted below
            raised.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    _await_leader(db)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM machinery_messages")
        raise ValueError("a bug in a write")

    bad = db.submit(broken, [], backend, "test", tables=frozenset({"machinery_messages"}), wait=False)
    same_round = backend.set_state_success(Signature("add", uuid="task_b"), [], wait=False)
    db._write_lock.release()
    leader.join(5)
    assert not leader.is_alive() and raised == []  # its own write was stored: it did not raise
    assert isinstance(bad.exception(5), ValueError) and isinstance(same_round.exception(5), ValueError)
    assert db._leader is None and db._waiting == []
    later = backend.set_state_success(Signature("add", uuid="task_c"), [], wait=False)
    assert later.exception(5) is None  # the group commit still works
    assert raw("SELECT uuid FROM machinery_states ORDER BY uuid") == [("task_c",), ("task_lead",)]


def test_a_forked_child_starts_with_no_leader_and_nothing_waiting(db_path: Path) -> None:
    db = Database(str(db_path), SQLiteBackend(f"sqlite:///{db_path}", Config()).options)
    db._waiting.append(_w("SELECT 1", "x"))
    db._leader = 1
    db._reset()  # what os.register_at_fork runs in a child
    assert db._waiting == [] and db._leader is None
