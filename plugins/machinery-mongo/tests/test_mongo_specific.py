"""MongoDB-specific behaviour: URLs and databases, Go's documents read back raw, the TTL index,
expired documents, the atomic chord flag, and connection loss and restarts."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from pymongo.database import Database
from secantus_server import Secantus

from machinery import Arg, AsyncResult, Config, Server, Signature, TaskResult
from machinery.errors import BackendConnectionError, BackendError, ConfigError
from machinery.signature import encode_signature, new_uuid
from machinery_mongo.backend import DEFAULT_DATABASE, TTL_INDEX, MongoBackend

Db = Database[dict[str, Any]]


def backend(url: str, database: str = "", expire: int = 600, **options: Any) -> MongoBackend:
    opts = {"mongodb": {"database": database, **options} if database else dict(options)}
    cfg = Config(broker="memory://", result_backend=url, results_expire_in=expire, transport_options=opts)
    return MongoBackend(url, cfg)


def sig(name: str = "add") -> Signature:
    return Signature(name=name, uuid=new_uuid())


# -- URLs and databases ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options", "database"),
    [
        ("mongodb://127.0.0.1:27017", {}, DEFAULT_DATABASE),
        ("mongodb://127.0.0.1:27017/", {}, DEFAULT_DATABASE),
        ("mongodb://127.0.0.1:27017/taskresults", {}, "taskresults"),
        ("mongodb://u:p%2Fw@h1:1,h2:2/results?replicaSet=rs&authSource=admin", {}, "results"),
        ("mongodb://h/results", {"database": "explicit"}, "explicit"),
        ("mongodb+srv://cluster0.example.net/srvdb?retryWrites=true", {}, "srvdb"),
    ],
)
def test_database_from_option_then_path_then_go_default(url: str, options: dict[str, Any], database: str) -> None:
    assert backend(url, **options).database == database  # and no network I/O (not even DNS for +srv)


def test_bad_url_fails_fast_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        backend("mongodb://user:s3cret@host:notaport/db")
    assert "s3cret" not in str(info.value) and "user:***@" in str(info.value)


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        backend("mongodb://h/", collection="x")


def test_unreachable_server_is_a_clear_connection_error() -> None:
    b = backend("mongodb://user:s3cret@127.0.0.1:9/", server_selection_timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(BackendConnectionError, match="unreachable") as info:
        b.get_state(new_uuid())
    assert time.monotonic() - t0 < 5
    assert "s3cret" not in str(info.value)


# -- Go's documents --------------------------------------------------------------------------


def test_documents_have_go_bson_shapes(url: str, test_database: str, db: Db) -> None:
    b = backend(url, test_database)
    s = sig()
    b.set_state_pending(s)
    b.set_state_success(s, [TaskResult("int64", 2**62 + 1), TaskResult("[]string", ["a", "b"])])
    doc = db.tasks.find_one({"_id": s.uuid})
    assert doc is not None
    assert doc["state"] == "SUCCESS" and doc["task_name"] == "add" and doc["error"] == ""
    assert doc["results"] == [{"type": "int64", "value": 2**62 + 1}, {"type": "[]string", "value": ["a", "b"]}]
    # TaskState.TTL is 0 as Go's Mongo backend leaves it, so `bson:"ttl,omitempty"` drops it
    assert isinstance(doc["created_at"], datetime) and "ttl" not in doc
    assert set(doc) == {"_id", "task_name", "state", "results", "error", "created_at", "expires_at"}

    g, members = new_uuid("group_"), [new_uuid(), new_uuid()]
    b.init_group(g, members)
    meta = db.group_metas.find_one({"_id": g})
    assert meta is not None
    assert meta["task_uuids"] == members and meta["chord_triggered"] is False and meta["lock"] is False
    assert isinstance(meta["created_at"], datetime)


def test_no_expiry_means_no_ttl_fields(url: str, test_database: str, db: Db) -> None:
    """-1 keeps results (no ``expires_at``); 0 is Go's default 3600 s. ``ttl`` is 0, so left out
    (Go's ``bson:"ttl,omitempty"``, ``v2/tasks/state.go``)."""
    s = sig()
    backend(url, test_database, expire=-1).set_state_failure(s, "boom")
    doc = db.tasks.find_one({"_id": s.uuid})
    assert doc is not None and "ttl" not in doc and "expires_at" not in doc and doc["error"] == "boom"
    s = sig()
    backend(url, test_database, expire=0).set_state_failure(s, "boom")
    doc = db.tasks.find_one({"_id": s.uuid})
    assert doc is not None and "ttl" not in doc and "expires_at" in doc
    left = doc["expires_at"].replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
    assert 3500 < left.total_seconds() <= 3600


def test_reads_what_go_wrote(url: str, test_database: str, db: Db) -> None:
    b = backend(url, test_database)
    uuid, g = new_uuid(), new_uuid("group_")
    created = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
    db.tasks.insert_one(
        {"_id": uuid, "task_name": "add", "state": "SUCCESS", "results": [{"type": "int64", "value": Int64(5)}],
         "error": "", "created_at": created}
    )  # fmt: skip
    db.group_metas.insert_one(
        {"_id": g, "task_uuids": [uuid], "chord_triggered": False, "lock": False, "created_at": created}
    )
    state = b.get_state(uuid)
    assert state is not None and state.values == [5] and state.created_at == created
    assert b.group_completed(g, 1) is True
    assert b.trigger_chord(g) is True and b.trigger_chord(g) is False


# -- group completion and chord --------------------------------------------------------------


def test_group_completed_counts_finished_tasks(url: str, test_database: str) -> None:
    b = backend(url, test_database)
    g, members = new_uuid("group_"), [sig() for _ in range(3)]
    b.init_group(g, [m.uuid for m in members])
    b.set_states_pending(members)
    assert b.group_completed(g, 3) is False
    b.set_state_success(members[0], [])
    b.set_state_failure(members[1], "x")
    assert b.group_completed(g, 3) is False
    b.set_state_success(members[2], [])
    assert b.group_completed(g, 3) is True
    assert b.group_completed(new_uuid("group_"), 3) is False


def test_chord_triggers_once_across_backends(url: str, test_database: str) -> None:
    g = new_uuid("group_")
    backend(url, test_database).init_group(g, [new_uuid()])
    backends = [backend(url, test_database) for _ in range(6)]
    barrier = threading.Barrier(len(backends) * 4)
    wins: list[bool] = []

    def race(b: MongoBackend) -> None:
        barrier.wait()
        wins.append(b.trigger_chord(g))

    threads = [threading.Thread(target=race, args=(b,)) for b in backends for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1 and len(wins) == 24


# -- expiry ----------------------------------------------------------------------------------


def test_ttl_index_created_once(url: str, test_database: str, db: Db) -> None:
    b1, b2 = backend(url, test_database), backend(url, test_database, expire=30)
    b1.get_state(new_uuid())
    b2.get_state(new_uuid())  # a second process with another expiry: same index, no conflict
    for coll in (db.tasks, db.group_metas):
        index = coll.index_information()[TTL_INDEX]
        assert index["key"] == [("expires_at", 1)] and index["expireAfterSeconds"] == 0


def test_documents_past_expiry_are_ignored(url: str, test_database: str, db: Db) -> None:
    b = backend(url, test_database)
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    g, done, expired = new_uuid("group_"), sig(), sig()
    b.init_group(g, [done.uuid, expired.uuid])
    b.set_state_success(done, [])
    b.set_state_success(expired, [])
    assert b.group_completed(g, 2) is True
    db.tasks.update_one({"_id": expired.uuid}, {"$set": {"expires_at": past}})  # not swept yet
    assert b.get_state(expired.uuid) is None
    assert b._load_states([done.uuid, expired.uuid])[1] is None
    assert b.group_completed(g, 2) is False
    db.group_metas.update_one({"_id": g}, {"$set": {"expires_at": past}})
    assert b.get_group_meta(g) is None and b.trigger_chord(g) is False


@pytest.mark.slow
def test_ttl_index_deletes_expired_documents(url: str, test_database: str, db: Db) -> None:
    s = sig()
    backend(url, test_database, expire=1).set_state_pending(s)
    deadline = time.monotonic() + 15  # SecantusDB here sweeps every second; mongod every minute
    while db.tasks.find_one({"_id": s.uuid}) is not None:
        assert time.monotonic() < deadline, "the TTL index did not delete an expired document"
        time.sleep(0.2)


def test_integers_beyond_int64_round_trip(url: str, test_database: str, db: Db) -> None:
    b, s = backend(url, test_database), sig()
    b.set_state_success(s, [TaskResult("uint64", 2**64 - 1), TaskResult("[]interface {}", [2**63, -1])])
    doc = db.tasks.find_one({"_id": s.uuid})
    assert doc is not None and isinstance(doc["results"][0]["value"], Decimal128)
    state = b.get_state(s.uuid)
    assert state is not None and state.values == [2**64 - 1, [2**63, -1]]


def test_document_over_16_mb_is_a_backend_error_naming_the_task(url: str, test_database: str) -> None:
    s = sig()
    with pytest.raises(BackendError, match=s.uuid):
        backend(url, test_database).set_state_success(s, [TaskResult("string", "x" * (17 * 1024 * 1024))])


# -- connection loss and restarts ------------------------------------------------------------


@pytest.mark.slow
def test_worker_and_backend_survive_a_restart(private_secantus: Secantus, caplog: pytest.LogCaptureFixture) -> None:
    server = private_secantus
    cfg = Config(
        broker="memory://mongo-restart",
        result_backend=server.url,
        no_unix_signals=True,
        transport_options={"mongodb": {"server_selection_timeout": 1.0}},
    )
    srv = Server(cfg)
    srv.register_task("add", lambda a, b: a + b)
    worker = srv.new_worker(consumer_tag="mongo-restart", concurrency=2)
    worker.launch_in_background()
    try:
        before = srv.delay("add", 1, 2)
        assert before.get(timeout=10) == 3

        server.stop()
        with pytest.raises(BackendConnectionError, match="unreachable"):
            srv.backend.get_state(before.task_uuid)
        # A task arrives while MongoDB is down: the worker cannot store RECEIVED, so it gives
        # the message back for redelivery and keeps running.
        during = Signature(name="add", uuid=new_uuid(), args=[Arg.of(2), Arg.of(3)])
        srv.broker.adjust_routing_key(during)
        srv.broker.publish(encode_signature(during), during)
        time.sleep(1.5)
        server.start()
        assert AsyncResult(during, srv.backend).get(timeout=15) == 5
        assert any(during.uuid in r.getMessage() and "redelivery" in r.getMessage() for r in caplog.records)
        state = srv.backend.get_state(before.task_uuid)  # stored before the restart, still there
        assert state is not None and state.values == [3]
    finally:
        worker.quit(wait=True, timeout=10)
        srv.close()


def test_backends_on_one_url_share_one_transport(url: str, test_database: str) -> None:
    """Backends on one URL and configuration share the transport (the options parsed once, one
    MongoClient, the indexes made once); the client is closed with the last of them."""
    from machinery_mongo.transport import MongoTransport

    a, b = backend(url, test_database, expire=7), backend(url, test_database, expire=7)
    other = backend(url, test_database, expire=8)
    transport = a.transport
    assert isinstance(transport, MongoTransport) and b.transport is transport and other.transport is not transport
    assert a.options is b.options is transport.options
    server = Server(
        Config(
            broker="memory://",
            result_backend=url,
            results_expire_in=7,
            transport_options={"mongodb": {"database": test_database}},
        )
    )
    assert server.backend.transport is transport  # resolved through the plugin host: the same one
    first = sig()
    a.set_state_pending(first)
    assert b.get_state(first.uuid).state == "PENDING"
    assert a._coll("tasks") is b._coll("tasks")  # one client, one set-up
    server.close()
    a.close()
    assert transport.holders == 1 and transport.is_open
    assert b.get_state(first.uuid).state == "PENDING"  # a's close left b's client open
    b.close()
    other.close()
    assert transport.holders == 0 and not transport.is_open
