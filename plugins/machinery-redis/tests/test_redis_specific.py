"""Redis-specific behaviour: URLs and options, Go wire/key compatibility, at-least-once delivery,
delayed tasks, restarts, the backend's key layout and chord flag, the lock."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from machinery import Config, Server
from machinery.errors import BackendError, BrokerConnectionError, ConfigError, PublishError
from machinery.plugins import get_plugin_host
from machinery.signature import Signature, encode_signature
from machinery.workflow import Chord, Group
from machinery_redis.backend import RedisBackend
from machinery_redis.broker import RedisBroker, consumers_key, dead_key, eta_score, processing_key
from machinery_redis.lock import RedisLock
from machinery_redis.transport import RedisOptions, load_options, parse_url

# -- Go fixtures, written from Go Machinery's tasks.Signature / tasks.TaskState -----------------

#: A message exactly as Go's json.Marshal(tasks.Signature) writes it (struct field order, no tags).
GO_SIGNATURE = (
    '{{"UUID":"{uuid}","Name":"add","RoutingKey":"{queue}","ETA":{eta},"GroupUUID":"","GroupTaskCount":0,'
    '"Args":[{{"Name":"","Type":"int64","Value":1}},{{"Name":"","Type":"int64","Value":2}}],'
    '"Headers":{{}},"Priority":0,"Immutable":false,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,'
    '"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
    '"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}}'
)
GO_SIGNATURE_FIELDS = [
    "UUID", "Name", "RoutingKey", "ETA", "GroupUUID", "GroupTaskCount", "Args", "Headers", "Priority",
    "Immutable", "RetryCount", "RetryTimeout", "OnSuccess", "OnError", "ChordCallback",
    "BrokerMessageGroupId", "SQSReceiptHandle", "StopTaskDeletionOnError", "IgnoreWhenTaskNotRegistered",
]
GO_TASK_STATE_FIELDS = ["TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL"]
#: A group record as Go's json.Marshal(tasks.GroupMeta) writes it.
GO_GROUP_META = (
    '{{"GroupUUID":"{group}","TaskUUIDs":["task_a","task_b"],"ChordTriggered":false,"Lock":false,'
    '"TTL":0,"CreatedAt":"2026-01-02T03:04:05.123456789Z"}}'
)


def go_message(queue: str, task_uuid: str, eta: str = "null") -> bytes:
    return GO_SIGNATURE.format(uuid=task_uuid, queue=queue, eta=eta).encode()


def task_uuid() -> str:
    return f"task_{uuid.uuid4()}"


def config(url: str, queue: str, **redis_opts: Any) -> Config:
    return Config(
        broker=url,
        result_backend=url,
        lock=url,
        default_queue=queue,
        results_expire_in=600,
        no_unix_signals=True,
        transport_options={"redis": redis_opts} if redis_opts else {},
    )


@pytest.fixture
def server(url: str, queue: str, raw: redis.Redis) -> Iterator[Server]:
    srv = Server(config(url, queue))

    @srv.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    yield srv
    srv.close()
    raw.delete(queue, dead_key(queue))


def wait_until(pred: Any, timeout: float = 5.0, step: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()


# -- URLs and options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", {"hosts": (("127.0.0.1", 6379),), "db": 0, "password": None}),
        ("redis://localhost", {"hosts": (("localhost", 6379),), "db": 0}),
        ("redis://s3cret@redis.example:6380/4", {"hosts": (("redis.example", 6380),), "db": 4, "password": "s3cret"}),
        ("redis://app:p%40ss@h/2", {"username": "app", "password": "p@ss", "db": 2}),
        ("redis://:pw@h", {"username": None, "password": "pw"}),
        ("rediss://pw@h:6390", {"scheme": "rediss", "password": "pw", "hosts": (("h", 6390),)}),
        ("redis://[::1]:7000/1", {"hosts": (("::1", 7000),), "db": 1}),
        ("redis://pw@a:7000,b:7001,c", {"hosts": (("a", 7000), ("b", 7001), ("c", 6379)), "password": "pw"}),
        ("redis+socket:///var/run/redis.sock", {"socket_path": "/var/run/redis.sock", "db": 0}),
        ("redis+socket://pw@/tmp/r.sock:3", {"socket_path": "/tmp/r.sock", "db": 3, "password": "pw"}),
        ("redis+socket://pw@/tmp/r.sock:/5", {"socket_path": "/tmp/r.sock", "db": 5, "password": "pw"}),
        ("redis://h/0?visibility_timeout=5", {"query": (("visibility_timeout", "5"),)}),
    ],
)
def test_url_forms(url: str, expected: dict[str, Any]) -> None:
    target = parse_url(url)
    for key, value in expected.items():
        assert getattr(target, key) == value, key


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://h:notaport/0", "bad port"),
        ("redis://h:70000", "bad port"),
        ("redis://secretpw@h/zero", "database must be a number"),
        ("redis://", "missing host"),
        ("redis+socket://secretpw@relative.sock", "absolute"),
        ("http://h", "expected one of"),
    ],
)
def test_bad_urls_fail_clearly_without_credentials(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisBroker(url, Config())
    assert reason in str(info.value)
    assert "secretpw" not in str(info.value)


def test_cluster_urls_have_only_database_zero() -> None:
    with pytest.raises(ConfigError, match="only database 0"):
        RedisBroker("redis://a:7000,b:7001/3", Config())


def test_options_from_section_query_and_env() -> None:
    cfg = Config(transport_options={"redis": {"max_active": "20", "max_idle_timeout": 30, "wait": "true"}})
    target = parse_url("redis://h/0?visibility_timeout=7.5&delayed_tasks_key=my_delayed")
    opts = load_options(target, cfg)
    assert (opts.max_active, opts.idle_timeout, opts.wait) == (20, 30, True)
    assert (opts.visibility_timeout, opts.delayed_tasks_key) == (7.5, "my_delayed")
    env = {"REDIS_MAX_ACTIVE": "9", "REDIS_DELAYED_TASKS_POLL_PERIOD": "50", "REDIS_VISIBILITY_TIMEOUT": "3"}
    opts = load_options(parse_url("redis://h"), Config.from_env(env))
    assert (opts.max_active, opts.delayed_tasks_poll_period, opts.visibility_timeout) == (9, 50, 3.0)


@pytest.mark.parametrize(
    ("section", "key"),
    [({"max_activ": 3}, "redis.max_activ"), ({"max_active": "many"}, "redis.max_active"),
     ({"visibility_timeout": 0}, "redis.visibility_timeout"), ({"ssl_cert_reqs": "maybe"}, "redis.ssl_cert_reqs")],
)
def test_bad_options_name_the_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisBackend("redis://h", Config(transport_options={"redis": section}))
    assert info.value.key == key


def test_registered_through_the_entry_point() -> None:
    host = get_plugin_host()
    for kind in ("broker", "backend", "lock"):
        assert {"redis", "rediss", "redis+socket"} <= set(host.schemes(kind))  # type: ignore[arg-type]
    assert "redis" in host.config_sections()


def test_no_network_io_in_constructors() -> None:
    # Nothing listens on port 1: constructing must still succeed (connections are lazy).
    Server(config("redis://127.0.0.1:1/0", "q")).close()


def test_one_pool_per_process(url: str, queue: str) -> None:
    srv = Server(config(url, queue))
    try:
        b1, b2 = srv.broker, RedisBroker(url, srv.config)
        assert b1.client is b2.client is srv.backend.client  # type: ignore[attr-defined]
        b2.close()
    finally:
        srv.close()


# -- Go wire and key compatibility ----------------------------------------------------------------


def test_go_producer_message_runs_and_state_is_where_go_reads_it(server: Server, queue: str, raw: redis.Redis) -> None:
    tid = task_uuid()
    raw.rpush(queue, go_message(queue, tid))  # exactly what a Go producer does
    worker = server.new_worker("go-wire", 2).launch_in_background()
    try:
        stored = wait_until(lambda: (v := raw.get(tid)) and json.loads(v)["State"] == "SUCCESS" and v)
    finally:
        worker.quit()
    state = json.loads(stored)
    assert list(state) == GO_TASK_STATE_FIELDS  # Go's TaskState, field for field
    assert state["TaskUUID"] == tid
    assert state["Results"] == [{"Type": "int64", "Value": 3}]
    assert state["Error"] == ""
    assert 0 < raw.ttl(tid) <= 600
    assert raw.llen(queue) == 0


def test_python_message_in_the_list_is_go_shaped(server: Server, queue: str, raw: redis.Redis) -> None:
    sig = Signature("add", [1, 2])
    server.send_task(sig)
    (body,) = raw.lrange(queue, 0, -1)
    assert body == encode_signature(sig)  # the broker adds nothing
    wire = json.loads(body)
    assert [k for k in wire if k in GO_SIGNATURE_FIELDS] == GO_SIGNATURE_FIELDS
    assert wire["RoutingKey"] == queue and wire["UUID"] == sig.uuid
    assert wire["Args"] == [{"Name": "", "Type": "int64", "Value": 1}, {"Name": "", "Type": "int64", "Value": 2}]


def test_eta_goes_to_the_delayed_set_scored_in_nanoseconds(server: Server, queue: str, raw: redis.Redis) -> None:
    eta = datetime.now(timezone.utc) + timedelta(hours=1)
    sig = Signature("add", [1, 2], eta=eta)
    server.send_task(sig)
    try:
        body = encode_signature(sig)
        score = raw.zscore("delayed_tasks", body)
        expected_ns = int(eta.timestamp()) * 10**9 + eta.microsecond * 1000
        assert score is not None and abs(score - expected_ns) < 1000  # float64, as Go's ZADD sends it
        assert eta_score(eta) == expected_ns
        assert raw.llen(queue) == 0
        assert sig.uuid in [s.uuid for s in server.get_delayed_tasks()]
    finally:
        raw.zrem("delayed_tasks", encode_signature(sig))


def test_go_delayed_member_is_picked_up_on_time(server: Server, queue: str, raw: redis.Redis) -> None:
    tid = task_uuid()
    due = datetime.now(timezone.utc) + timedelta(seconds=0.4)
    eta = due.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # Go writes nanoseconds
    raw.zadd("delayed_tasks", {go_message(queue, tid, f'"{eta}"'): eta_score(due)})
    worker = server.new_worker("go-delayed", 2).launch_in_background()
    try:
        assert wait_until(lambda: (v := raw.get(tid)) and json.loads(v)["State"] == "SUCCESS", timeout=5)
        done = datetime.now(timezone.utc)
    finally:
        worker.quit()
    assert done >= due
    assert (done - due).total_seconds() < 0.25  # "within tens of ms"; generous for slow CI


def test_publish_many_is_one_round_trip(private_redis: Any) -> None:
    queue = "batch_q"
    broker = RedisBroker(private_redis.url, config(private_redis.url, queue))
    try:
        broker.client.ping()
        raw = private_redis.client()
        raw.config_resetstat()
        sigs = [Signature("add", [i, i], uuid=task_uuid(), routing_key=queue) for i in range(50)]
        tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
        later = Signature("add", [0, 0], uuid=task_uuid(), routing_key=queue, eta=tomorrow)
        broker.publish_many([(encode_signature(s), s) for s in [*sigs, later]])
        stats = raw.info("commandstats")
        assert stats["cmdstat_rpush"]["calls"] == 1
        assert stats["cmdstat_zadd"]["calls"] == 1
        assert [json.loads(b)["UUID"] for b in raw.lrange(queue, 0, -1)] == [s.uuid for s in sigs]
    finally:
        broker.close()


# -- at-least-once ----------------------------------------------------------------------------------


def consume_one(broker: RedisBroker, queue: str) -> Any:
    stop = threading.Event()
    gen = broker.consume(queue, prefetch=1, stop=stop)
    delivery = next(gen)
    return delivery, stop, gen


def test_unacked_message_sits_in_the_processing_list_until_ack(url: str, queue: str, raw: redis.Redis) -> None:
    broker = RedisBroker(url, config(url, queue))
    try:
        sig = Signature("add", [1, 2], routing_key=queue)
        broker.publish(encode_signature(sig), sig)
        delivery, stop, gen = consume_one(broker, queue)
        consumer = delivery.tag
        assert raw.llen(queue) == 0
        assert raw.lrange(processing_key(queue, consumer.cid), 0, -1) == [delivery.body]
        assert raw.sismember(consumers_key(queue), consumer.cid)
        assert raw.pttl(consumer.heartbeat) > 0
        broker.ack(delivery)  # the LREM rides the next pipeline, or leaves after the batcher's linger
        assert wait_until(lambda: raw.llen(processing_key(queue, consumer.cid)) == 0, timeout=2)
        stop.set()
        gen.close()
        assert not raw.sismember(consumers_key(queue), consumer.cid)
        assert not raw.exists(consumer.heartbeat)
    finally:
        broker.close()


def test_nack_requeue_dead_letter_and_delay(url: str, queue: str, raw: redis.Redis) -> None:
    broker = RedisBroker(url, config(url, queue))
    try:
        stop = threading.Event()
        gen = broker.consume(queue, prefetch=1, stop=stop)
        bodies = []
        for i in range(3):
            sig = Signature("add", [i, i], routing_key=queue)
            bodies.append(encode_signature(sig))
            broker.publish(bodies[-1], sig)
        d1, d2, d3 = next(gen), next(gen), next(gen)
        broker.nack(d1, requeue=False)
        assert raw.lrange(dead_key(queue), 0, -1) == [bodies[0]]
        assert broker.dead_letters(queue) == [bodies[0]]
        broker.nack(d2, requeue=True)
        assert raw.lrange(queue, 0, -1) == [bodies[1]]
        before = time.time_ns()
        broker.nack(d3, requeue=True, delay=0.3)
        score = raw.zscore("delayed_tasks", bodies[2])
        assert score is not None and before + 0.25e9 < score < time.time_ns() + 0.35e9
        assert raw.llen(processing_key(queue, d1.tag.cid)) == 0
        again = [next(gen).body, next(gen).body]  # the requeued one, then the delayed one when due
        assert again == [bodies[1], bodies[2]]
        stop.set()
        gen.close()
    finally:
        broker.close()


def test_requeue_goes_to_the_tail_and_what_was_not_handed_out_to_the_head(
    url: str, queue: str, raw: redis.Redis
) -> None:
    broker = RedisBroker(url, config(url, queue))
    try:
        bodies = [go_message(queue, task_uuid()) for _ in range(6)]
        raw.rpush(queue, *bodies[:5])
        stop = threading.Event()
        gen = broker.consume(queue, prefetch=5, stop=stop)
        d1, d2 = next(gen), next(gen)
        assert raw.llen(queue) == 0  # one fetch took all five
        raw.rpush(queue, bodies[5])
        broker.nack(d2, requeue=True)  # Go's requeue: behind what is waiting
        assert raw.lrange(queue, 0, -1) == [bodies[5], d2.body]
        stop.set()
        gen.close()  # the three taken and not handed out keep their place, in order
        assert raw.lrange(queue, 0, -1) == [*bodies[2:5], bodies[5], bodies[1]]
        assert raw.lrange(processing_key(queue, d1.tag.cid), 0, -1) == [bodies[0]]
        broker.ack(d1)  # its LREM rides the batcher's next pipeline (after at most its linger)
        assert wait_until(lambda: raw.llen(processing_key(queue, d1.tag.cid)) == 0, timeout=2)
        # left with its last settle
        assert wait_until(lambda: not raw.sismember(consumers_key(queue), d1.tag.cid), timeout=2)
    finally:
        broker.close()


def test_stop_is_noticed_within_a_second(url: str, queue: str) -> None:
    broker = RedisBroker(url, config(url, queue))
    try:
        stop = threading.Event()
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.extend(broker.consume(queue, prefetch=1, stop=stop)))
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        stop.set()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 1.3
        assert result == []
    finally:
        broker.close()


_KILLED_CONSUMER = textwrap.dedent(
    """
    import sys, threading, time
    from machinery import Config
    from machinery_redis.broker import RedisBroker
    url, queue = sys.argv[1], sys.argv[2]
    cfg = Config(broker=url, default_queue=queue, transport_options={"redis": {"visibility_timeout": 1}})
    broker = RedisBroker(url, cfg)
    delivery = next(broker.consume(queue, prefetch=1, stop=threading.Event()))
    print(delivery.body.decode(), flush=True)
    time.sleep(60)  # killed with SIGKILL before it acknowledges
    """
)


@pytest.mark.slow
def test_sigkill_redelivers_after_the_visibility_timeout(url: str, queue: str, raw: redis.Redis) -> None:
    body = go_message(queue, task_uuid())
    raw.rpush(queue, body)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_CONSUMER, url, queue], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == body
        assert raw.llen(queue) == 0
    finally:
        proc.kill()
        proc.wait()
    killed = time.monotonic()
    broker = RedisBroker(url, config(url, queue, visibility_timeout=1))
    try:
        delivery, stop, gen = consume_one(broker, queue)
        assert delivery.body == body
        assert time.monotonic() - killed < 1 + 2.5  # heartbeat expiry + one reaper period (+ slack)
        broker.ack(delivery)
        stop.set()
        gen.close()
        # the dead consumer was unregistered (and this one left with its acknowledgement)
        assert wait_until(lambda: raw.scard(consumers_key(queue)) == 0, timeout=2)
    finally:
        broker.close()


def test_many_movers_never_duplicate_delayed_tasks(url: str, queue: str, raw: redis.Redis) -> None:
    key = f"{queue}_delayed"
    cfg = config(url, queue, delayed_tasks_key=key)
    producer = RedisBroker(url, cfg)
    due = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    sigs = [Signature("add", [i, i], uuid=task_uuid(), routing_key=queue, eta=due) for i in range(200)]
    producer.publish_many([(encode_signature(s), s) for s in sigs])
    seen: list[bytes] = []
    lock = threading.Lock()
    stop = threading.Event()
    brokers = [RedisBroker(url, cfg) for _ in range(4)]

    def run(b: RedisBroker) -> None:
        for d in b.consume(queue, prefetch=1, stop=stop):
            with lock:
                seen.append(d.body)
            b.ack(d)

    threads = [threading.Thread(target=run, args=(b,)) for b in brokers]
    try:
        for t in threads:
            t.start()
        assert wait_until(lambda: len(seen) >= 200, timeout=10)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for b in [producer, *brokers]:
            b.close()
        raw.delete(key)
    uuids = [json.loads(b)["UUID"] for b in seen]
    assert sorted(uuids) == sorted(s.uuid for s in sigs)


# -- restarts ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_survives_a_redis_restart(private_redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="machinery.redis")
    queue = "restart_q"
    url = private_redis.url
    srv = Server(config(url, queue, retries=1, connect_timeout=1))

    @srv.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    worker = srv.new_worker("restart", 2).launch_in_background()
    try:
        assert srv.send_task(Signature("add", [1, 1])).get(timeout=5) == 2
        private_redis.stop()
        t0 = time.monotonic()
        with pytest.raises(BrokerConnectionError) as info:
            srv.broker.publish(b"{}", Signature("add", [1, 2], routing_key=queue))
        assert isinstance(info.value, PublishError)
        assert "cannot reach redis" in str(info.value)
        assert time.monotonic() - t0 < 3  # a bounded number of retries, then a clear error
        time.sleep(1.0)  # the consumer notices and backs off
        private_redis.start()
        assert srv.send_task(Signature("add", [2, 3])).get(timeout=10) == 5
    finally:
        worker.quit()
        srv.close()
    # One line per back-off step (the core's consume loop logs the plugin's error), no traceback.
    messages = [r.getMessage() for r in caplog.records if r.name in ("machinery.redis", "machinery.consume")]
    assert any("cannot reach redis://" in m and "again in" in m for m in messages)
    assert any("restored" in m for m in messages)


def test_unix_socket_url(private_redis: Any) -> None:
    url = f"redis+socket://{private_redis.socket}:1"
    srv = Server(config(url, "sock_q"))

    @srv.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    worker = srv.new_worker("sock", 1).launch_in_background()
    try:
        result = srv.send_task(Signature("add", [20, 22]))
        assert result.get(timeout=5) == 42
        assert redis.Redis(unix_socket_path=private_redis.socket, db=1).get(result.task_uuid)  # db 1 holds it
    finally:
        worker.quit()
        srv.close()


# -- backend --------------------------------------------------------------------------------------


def test_chord_trigger_is_atomic_and_go_shaped(url: str, raw: redis.Redis) -> None:
    backend = RedisBackend(url, config(url, "unused"))
    group = f"group_{uuid.uuid4()}"
    raw.set(group, GO_GROUP_META.format(group=group), ex=60)  # written by a Go producer
    try:
        wins: list[bool] = []
        barrier = threading.Barrier(16)

        def race() -> None:
            barrier.wait()
            wins.append(backend.trigger_chord(group))

        threads = [threading.Thread(target=race) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wins.count(True) == 1 and len(wins) == 16
        stored = raw.get(group).decode()
        assert stored == GO_GROUP_META.format(group=group).replace('"ChordTriggered":false', '"ChordTriggered":true')
        assert raw.ttl(group) > 0  # the expiry is kept
        assert backend.get_group_meta(group).chord_triggered  # type: ignore[union-attr]
        assert backend.trigger_chord(f"group_{uuid.uuid4()}") is False  # unknown group
    finally:
        raw.delete(group)
        backend.close()


def test_chord_trigger_takes_gos_trigger_chord_mutex(
    url: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Go's Redis backend triggers a chord under the redsync mutex ``TriggerChordMutex``
    (``v2/backends/redis/redis.go`` TriggerChord: ``SET TriggerChordMutex <random> NX PX 8000``,
    32 tries 50-250 ms apart, compare-and-delete unlock). A Python trigger takes the same key,
    so it waits while a Go worker holds it, and it leaves a lock it does not own alone."""
    import machinery_redis.backend as rb

    backend = RedisBackend(url, config(url, "unused"))
    group = f"group_{uuid.uuid4()}"
    raw.set(group, GO_GROUP_META.format(group=group), ex=60)
    try:
        # a "Go worker" holds the lock for 0.6 s: the Python trigger waits for it
        raw.set(rb.CHORD_MUTEX, "go-holder", nx=True, px=600)
        t0 = time.monotonic()
        assert backend.trigger_chord(group) is True
        assert time.monotonic() - t0 >= 0.4, "the trigger did not wait for the lock holder"
        assert raw.get(rb.CHORD_MUTEX) is None  # released after the trigger
        assert json.loads(raw.get(group))["ChordTriggered"] is True
        # held for good (every try): a clear, retryable BackendError, the holder's key untouched
        monkeypatch.setattr(rb, "CHORD_MUTEX_TRIES", 3)
        raw.set(rb.CHORD_MUTEX, "go-holder", px=20000)
        other = f"group_{uuid.uuid4()}"
        raw.set(other, GO_GROUP_META.format(group=other), ex=60)
        with pytest.raises(BackendError, match="TriggerChordMutex"):
            backend.trigger_chord(other)
        assert raw.get(rb.CHORD_MUTEX) == b"go-holder"
        assert json.loads(raw.get(other))["ChordTriggered"] is False
        raw.delete(other)
    finally:
        raw.delete(group)
        if raw.get(rb.CHORD_MUTEX) == b"go-holder":
            raw.delete(rb.CHORD_MUTEX)
        backend.close()


def test_group_states_are_read_in_one_round_trip(private_redis: Any) -> None:
    url = private_redis.url
    srv = Server(config(url, "g_q"))
    try:
        sigs = [Signature("add", [i, i], uuid=task_uuid()) for i in range(20)]
        group = f"group_{uuid.uuid4()}"
        srv.backend.init_group(group, [s.uuid for s in sigs])
        srv.backend.set_states_pending(sigs)
        raw = private_redis.client()
        raw.config_resetstat()
        states = srv.backend.group_task_states(group, len(sigs))
        assert [s.task_uuid for s in states] == [s.uuid for s in sigs]
        stats = raw.info("commandstats")
        assert stats["cmdstat_mget"]["calls"] == 1 and stats["cmdstat_get"]["calls"] == 1  # meta + states
    finally:
        srv.close()


def test_results_without_expiry(url: str, queue: str, raw: redis.Redis) -> None:
    """-1 keeps results forever (Python only); 0 is Go's default 3600 s (``v2/backends/redis/
    redis.go`` getExpiration), and the stored ``TTL`` field is 0 as Go writes it."""
    backend = RedisBackend(url, config(url, queue).replace(results_expire_in=-1))
    zero = RedisBackend(url, config(url, queue).replace(results_expire_in=0))
    sig = Signature("add", [1, 1], uuid=task_uuid())
    sig2 = Signature("add", [1, 1], uuid=task_uuid())
    try:
        backend.set_state_pending(sig)
        assert raw.ttl(sig.uuid) == -1
        zero.set_state_pending(sig2)
        assert 3590 <= raw.ttl(sig2.uuid) <= 3600
        assert json.loads(raw.get(sig2.uuid))["TTL"] == 0
    finally:
        raw.delete(sig.uuid, sig2.uuid)
        backend.close()
        zero.close()


# -- lock -------------------------------------------------------------------------------------------


def test_lock_is_held_released_and_extended_only_by_its_owner(url: str, raw: redis.Redis) -> None:
    key = f"lock_{uuid.uuid4().hex}"
    a, b = RedisLock(url, Config()), RedisLock(url, Config())
    try:
        assert a.acquire(key, timedelta(seconds=5))
        assert raw.get(key).decode() == a.owner and 0 < raw.pttl(key) <= 5000
        assert not b.acquire(key, timedelta(seconds=5))
        assert not b.release(key) and not b.extend(key, timedelta(seconds=30))
        assert a.extend(key, timedelta(seconds=30)) and raw.pttl(key) > 5000
        assert a.release(key) and not raw.exists(key)
        assert b.acquire(key, timedelta(milliseconds=100))
        time.sleep(0.2)
        assert a.acquire(key, timedelta(seconds=1))  # b's claim ran out
    finally:
        raw.delete(key)
        a.close()
        b.close()


def test_chord_end_to_end(server: Server) -> None:
    @server.task(name="total")
    def total(*xs: int) -> int:
        return sum(xs)

    worker = server.new_worker("chord", 4).launch_in_background()
    try:
        chord = Chord(Group([Signature("add", [i, i]) for i in range(6)]), Signature("total"))
        assert server.send_chord(chord).get(timeout=10) == 30
    finally:
        worker.quit()


def test_unknown_task_goes_to_gos_delayed_set_and_does_not_block_the_queue(
    server: Server, queue: str, raw: redis.Redis
) -> None:
    """Mixed fleet: a task this Python worker does not know (one only Go workers run) is put in
    Go's ``delayed_tasks`` set for ``unregistered_requeue_delay`` (a Go worker's delayed mover
    takes it back to the queue's tail, ``v2/brokers/redis/redis.go``), so it neither runs here
    nor holds up the tasks behind it; a Go worker sees it again in its queue."""
    worker = server.new_worker("mixed", 1)
    worker.unregistered_requeue_delay = 30
    unknown = Signature("only_go_knows", [1], uuid=task_uuid())
    server.send_task(unknown)
    known = server.send_task(Signature("add", [2, 3]))
    worker.launch_in_background()
    try:
        assert known.get(timeout=10) == 5
        members = raw.zrange("delayed_tasks", 0, -1, withscores=True)
        mine = [(m, score) for m, score in members if json.loads(m)["UUID"] == unknown.uuid]
        assert len(mine) == 1, "the unknown task must wait in Go's delayed set"
        member, score = mine[0]
        # the delay is jittered to [0.5, 1.5) x 30 s (machinery.worker_tasks._jittered): 15 s at least
        assert json.loads(member)["RoutingKey"] == queue and score > time.time_ns() + 10e9
        assert raw.llen(queue) == 0
    finally:
        worker.quit()
        for m, _ in raw.zrange("delayed_tasks", 0, -1, withscores=True):
            if json.loads(m)["UUID"] == unknown.uuid:
                raw.zrem("delayed_tasks", m)


def test_options_dataclass_defaults_match_go() -> None:
    opts = RedisOptions()
    assert (opts.max_idle, opts.idle_timeout, opts.read_timeout, opts.write_timeout, opts.connect_timeout) == (
        3, 240, 15, 15, 15,
    )
    assert opts.delayed_tasks_key == "delayed_tasks"
    assert opts.block_timeout == 1.0


def test_reprs_never_show_a_password() -> None:
    # issue 17, D2: the options (logged by whoever prints them) and the parsed target hide secrets
    secret = "S3cr3t"
    url = f"redis://:{secret}@localhost:6379/0?sentinel_password={secret}&master_name=m"
    target = parse_url(url)
    opts = load_options(target, Config(broker=url))
    assert opts.sentinel_password == secret
    cfg = Config(broker=url, transport_options={"redis": {"sentinel_password": secret}})
    for shown in (repr(opts), repr(target), repr(cfg)):
        assert secret not in shown, shown


# -- cluster ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_several_hosts_are_a_redis_cluster(private_cluster: Any) -> None:
    queue = "cluster_q"
    srv = Server(config(private_cluster.url, queue))

    @srv.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @srv.task(name="total")
    def total(*xs: int) -> int:
        return sum(xs)

    try:
        assert type(srv.broker.client).__name__ == "RedisCluster"  # type: ignore[attr-defined]
        sig = Signature("add", [1, 2])
        srv.send_task(sig)
        assert [s.uuid for s in srv.get_pending_tasks()] == [sig.uuid]
        assert srv.broker.purge(queue) == 1
        worker = srv.new_worker("cluster", 4).launch_in_background()
        try:
            assert srv.send_task(Signature("add", [2, 3])).get(timeout=10) == 5
            soon = datetime.now(timezone.utc) + timedelta(seconds=0.3)
            assert srv.send_task(Signature("add", [3, 4], eta=soon)).get(timeout=10) == 7
            chord = Chord(Group([Signature("add", [i, i]) for i in range(8)]), Signature("total"))
            assert srv.send_chord(chord).get(timeout=15) == 56  # states spread over the nodes
            unknown = Signature("nobody_has_this", [])
            srv.send_task(unknown)  # requeued with a delay through the delayed set (another slot)
            assert wait_until(lambda: any(s.uuid == unknown.uuid for s in srv.get_delayed_tasks()), timeout=5)
        finally:
            worker.quit()
    finally:
        srv.close()


def test_master_name_uses_sentinel(private_sentinel: Any) -> None:
    master, sentinel_port = private_sentinel
    url = f"redis://127.0.0.1:{sentinel_port}/2?master_name=mymaster"
    srv = Server(config(url, "sentinel_q"))

    @srv.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    worker = srv.new_worker("sentinel", 1).launch_in_background()
    try:
        result = srv.send_task(Signature("add", [4, 5]))
        assert result.get(timeout=10) == 9
        assert redis.Redis(port=master.port, db=2).get(result.task_uuid)  # stored on the master, db 2
    finally:
        worker.quit()
        srv.close()


# -- one round trip per send, pushed results -------------------------------------------------------


def test_send_stores_pending_and_publishes_in_one_round_trip(private_redis: Any) -> None:
    queue = "fused_q"
    srv = Server(config(private_redis.url, queue))
    try:
        srv.broker.client.ping()
        raw = private_redis.client()
        raw.config_resetstat()
        sig = Signature("add", [1, 2])
        srv.send_task(sig)
        later = Signature("add", [0, 0], eta=datetime.now(timezone.utc) + timedelta(days=1))
        srv.send_task(later)
        fused = srv.producer._fused  # the transport's capability, asked on the first send
        assert fused is not None and getattr(fused, "func", None) == srv.broker.transport.publish_with_state
        stats = raw.info("commandstats")
        assert stats["cmdstat_set"]["calls"] == 2
        assert stats["cmdstat_rpush"]["calls"] == 1
        assert stats["cmdstat_zadd"]["calls"] == 1
        assert json.loads(raw.get(sig.uuid))["State"] == "PENDING"
        assert json.loads(raw.get(later.uuid))["State"] == "PENDING"
        assert [json.loads(b)["UUID"] for b in raw.lrange(queue, 0, -1)] == [sig.uuid]
        assert [json.loads(b)["UUID"] for b in raw.zrange("delayed_tasks", 0, -1)] == [later.uuid]
        # the two writes went out together: one pipeline, so Redis saw one read of the socket
        # per send (no second round trip between PENDING and the message)
        assert stats["cmdstat_set"]["calls"] + stats["cmdstat_rpush"]["calls"] + stats["cmdstat_zadd"]["calls"] == 4
    finally:
        srv.close()


def test_broker_backend_and_lock_share_one_transport_closed_with_the_last(url: str, queue: str) -> None:
    from machinery_redis.transport import RedisTransport

    cfg = Config(broker=url, default_queue=queue, no_unix_signals=True)
    srv = Server(cfg)
    transport = srv.broker.transport
    assert isinstance(transport, RedisTransport)
    assert srv.backend.transport is transport and srv.lock.transport is transport  # by construction
    assert srv.broker.options is transport.options  # parsed once
    srv.backend.set_state_pending(Signature("add", [1], uuid=f"task_{uuid.uuid4().hex}"))  # opens the one pool
    assert srv.broker.client is srv.backend.client is transport.client
    # built directly (as the conformance suite does) with an equal config: the same transport
    direct = RedisBackend(url, Config(broker=url, default_queue=queue, no_unix_signals=True))
    assert direct.transport is transport
    direct.close()
    srv.broker.close()
    srv.backend.close()
    assert transport.is_open  # the lock still holds it
    srv.lock.close()
    assert not transport.is_open and transport.holders == 0
    # another database, or another config: another transport
    other = Server(cfg.replace(broker=url.rsplit("/", 1)[0] + "/5"))
    assert other.broker.transport is not transport
    other.close()


def test_send_to_another_database_stores_and_publishes_separately(url: str, queue: str, raw: redis.Redis) -> None:
    backend_url = url.rsplit("/", 1)[0] + "/5"
    srv = Server(Config(broker=url, result_backend=backend_url, default_queue=queue, no_unix_signals=True))
    other = redis.Redis.from_url(backend_url)
    try:
        assert srv.broker.transport is not srv.backend.transport  # two transports: nothing to fuse
        sig = Signature("add", [1, 2])
        srv.send_task(sig)
        assert json.loads(other.get(sig.uuid))["State"] == "PENDING"
        assert raw.get(sig.uuid) is None
        assert raw.llen(queue) == 1
    finally:
        other.delete(sig.uuid)
        other.close()
        srv.close()
        raw.delete(queue)


def test_send_reports_a_refused_message_and_keeps_the_state(url: str, queue: str, raw: redis.Redis) -> None:
    raw.set(queue, "not a list")  # RPUSH to it fails with WRONGTYPE; the SET before it succeeds
    srv = Server(config(url, queue))
    try:
        sig = Signature("add", [1, 2])
        with pytest.raises(PublishError, match="WRONGTYPE") as info:
            srv.send_task(sig)
        assert getattr(info.value, "task_uuid", None) == sig.uuid
        assert not isinstance(info.value, BrokerConnectionError)
        assert json.loads(raw.get(sig.uuid))["State"] == "PENDING"
        raw.delete(queue)
        assert srv.send_task(Signature("add", [3, 4])).status == "PENDING"  # the pipe is clean
    finally:
        srv.close()
        raw.delete(queue, sig.uuid)


def test_result_wait_is_woken_by_the_change_not_by_polling(url: str, queue: str, raw: redis.Redis) -> None:
    srv = Server(config(url, queue))
    try:
        sig = Signature("add", [1, 2])
        srv.send_task(sig)
        done = json.loads(raw.get(sig.uuid))
        done.update(State="SUCCESS", Results=[{"Type": "int64", "Value": 3}])
        timer = threading.Timer(0.3, lambda: raw.set(sig.uuid, json.dumps(done)))
        timer.start()
        # a 30 s poll interval: only a pushed change can end this wait within the 10 s timeout
        state = srv.backend.wait_for(sig.uuid, timeout=10, poll_interval=30)
        assert state is not None and state.state == "SUCCESS"
        assert srv.backend._watcher is not None and not srv.backend._watcher.broken
    finally:
        srv.close()
        raw.delete(queue, sig.uuid)


def test_result_wait_survives_a_killed_tracking_connection(url: str, queue: str, raw: redis.Redis) -> None:
    srv = Server(config(url, queue, client_name="watch_test"))

    @srv.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    worker = srv.new_worker("watch", 2).launch_in_background()
    try:
        assert srv.send_task(Signature("add", [1, 1])).get(timeout=5) == 2
        watcher = srv.backend._watcher
        assert watcher is not None
        assert raw.client_kill_filter(_type="pubsub") >= 1  # the watcher's listener
        wait_until(lambda: watcher.broken)
        # polled meanwhile, then a new watcher (at most one rebuild every 5 s)
        assert srv.send_task(Signature("add", [2, 2])).get(timeout=5) == 4
        srv.backend._watcher_retry_at = 0.0
        assert srv.send_task(Signature("add", [3, 3])).get(timeout=5) == 6
        assert srv.backend._watcher is not None and srv.backend._watcher is not watcher
        assert not srv.backend._watcher.broken
    finally:
        worker.quit()
        srv.close()
        raw.delete(queue)


def test_result_wait_polls_when_tracking_is_off(url: str, queue: str, raw: redis.Redis) -> None:
    srv = Server(config(url, queue, track_states=False))

    @srv.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    worker = srv.new_worker("poll", 2).launch_in_background()
    try:
        assert srv.send_task(Signature("add", [1, 1])).get(timeout=5) == 2
        assert srv.backend._watcher is None
    finally:
        worker.quit()
        srv.close()
        raw.delete(queue)


def test_batcher_returns_error_replies_in_place_when_asked(url: str, raw: redis.Redis) -> None:
    key = f"k_{uuid.uuid4().hex}"
    raw.set(key, "a string")
    backend = RedisBackend(url, Config(result_backend=url))
    try:
        replies = backend.batcher.execute([("GET", key), ("LPUSH", key, "x"), ("STRLEN", key)], raise_on_error=False)
        assert replies[0] == b"a string"
        assert isinstance(replies[1], redis.ResponseError) and "WRONGTYPE" in str(replies[1])
        assert replies[2] == 8
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            backend.batcher.execute([("LPUSH", key, "x")])
        assert backend.batcher.execute([("GET", key)]) == [b"a string"]  # the connection is in step
    finally:
        backend.close()
        raw.delete(key)


def test_provisional_writes_are_dropped_when_superseded_and_sent_otherwise(private_redis: Any) -> None:
    from machinery_redis.batch import CommandBatcher

    raw = private_redis.client()
    client = redis.Redis(port=private_redis.port)
    batcher = CommandBatcher(client, linger=0.2)
    errors: list[BaseException | None] = []
    built: list[str] = []

    def build(key: str, value: str) -> Any:
        def make() -> list[tuple[Any, ...]]:
            built.append(value)
            return [("SET", key, value)]

        return make

    try:
        raw.config_resetstat()
        # superseded before its linger is over: never built, never sent; its callback is told
        # (nothing to store any more), so a completion waiting on it gets done
        dropped: list[tuple[list[Any], BaseException | None]] = []
        batcher.submit_provisional("k1", build("k1", "started"), lambda r, e: dropped.append((r, e)))
        batcher.execute([("SET", "k1", "success")], supersedes="k1")
        assert dropped == [([], None)]
        # a provisional unit of another key is not touched by it, and leaves after the linger
        batcher.submit_provisional("k2", build("k2", "started"), lambda _r, e: errors.append(e))
        batcher.submit([("SET", "k3", "x")], lambda _r, e: errors.append(e), supersedes="k1")
        assert wait_until(lambda: raw.get("k2") == b"started", timeout=5)
        assert raw.get("k1") == b"success"
        assert built == ["started"]  # only k2's
        assert raw.info("commandstats")["cmdstat_set"]["calls"] == 3
        # a build that fails reports to its callback and the batcher keeps working
        def broken() -> list[tuple[Any, ...]]:
            raise ValueError("cannot encode")

        batcher.submit_provisional("k4", broken, lambda _r, e: errors.append(e))
        assert wait_until(lambda: len(errors) == 3, timeout=5)
        assert errors[:2] == [None, None] and isinstance(errors[2], ValueError)
        assert batcher.execute([("GET", "k1")]) == [b"success"]
    finally:
        batcher.close()
        client.close()


def test_consumer_reloads_its_script_after_a_script_flush(private_redis: Any) -> None:
    queue = "flush_q"
    srv = Server(config(private_redis.url, queue))

    @srv.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    worker = srv.new_worker("flush", 2).launch_in_background()
    try:
        assert srv.send_task(Signature("add", [1, 1])).get(timeout=5) == 2
        private_redis.client().script_flush()  # the consumer's take script is gone
        results = [srv.send_task(Signature("add", [i, i])) for i in range(5)]
        assert [r.get(timeout=5) for r in results] == [2 * i for i in range(5)]
    finally:
        worker.quit()
        srv.close()


def _wait_child(pid: int, timeout: float = 30.0) -> int:
    """The child's exit code; a child still running after ``timeout`` is killed and fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child was still running after {timeout:.0f} s (a lock or queue of the parent's?)")


def _fork_and_send(srv: Server, parent_watcher: object) -> int:
    pid = os.fork()
    if pid == 0:  # the child: its own sends and waits, never the parent's sockets
        code = 1
        try:
            ok = [srv.send_task(Signature("add", [i, 10])).get(timeout=5) for i in range(3)] == [10, 11, 12]
            code = 0 if ok and srv.backend._watcher is not parent_watcher else 2
        finally:
            os._exit(code)
    return pid


def test_a_forked_child_uses_connections_of_its_own(url: str, queue: str, raw: redis.Redis) -> None:
    srv = Server(config(url, queue))

    @srv.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    worker = srv.new_worker("fork", 2).launch_in_background()
    try:
        assert srv.send_task(Signature("add", [1, 1])).get(timeout=5) == 2  # watcher + batcher open
        parent_watcher = srv.backend._watcher
        assert _wait_child(_fork_and_send(srv, parent_watcher)) == 0
        # the parent's connections are intact
        assert [srv.send_task(Signature("add", [i, 1])).get(timeout=5) for i in range(3)] == [1, 2, 3]
        assert srv.backend._watcher is parent_watcher and not parent_watcher.broken
    finally:
        worker.quit()
        srv.close()
        raw.delete(queue)


def test_a_child_forked_mid_send_does_not_wait_for_the_parents_threads(
    url: str, queue: str, raw: redis.Redis
) -> None:
    """Forked while another thread held the batcher, the broker's and the watcher's locks (as a
    busy worker does at any moment), the child starts with locks and queues of its own."""
    srv = Server(config(url, queue))

    @srv.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    worker = srv.new_worker("fork-busy", 2).launch_in_background()
    try:
        assert srv.send_task(Signature("add", [1, 1])).get(timeout=5) == 2
        parent_watcher = srv.backend._watcher
        batcher = srv.broker.batcher
        with batcher._lock, srv.broker._lock, srv.backend._watcher_lock:
            busy = batcher._busy
            batcher._busy = True  # as if a pipeline of another thread were on its way
            try:
                pid = _fork_and_send(srv, parent_watcher)
            finally:
                batcher._busy = busy
        assert _wait_child(pid) == 0
        assert [srv.send_task(Signature("add", [i, 2])).get(timeout=5) for i in range(3)] == [2, 3, 4]
    finally:
        worker.quit()
        srv.close()
        raw.delete(queue)


# -- a worker that cannot connect at start (issue 17, D3) --------------------------------------


def _run_worker_for(url: str, seconds: float, caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    caplog.set_level(logging.INFO, logger="machinery")
    srv = Server(Config(broker=url, result_backend="memory://d3", lock="memory://d3", no_unix_signals=True))
    worker = srv.new_worker("d3", 2)
    worker.launch_in_background()
    time.sleep(seconds)
    t0 = time.monotonic()
    worker.quit(timeout=10)
    assert time.monotonic() - t0 < 5, "the worker did not stop promptly while backing off"
    return [r for r in caplog.records if r.name.startswith("machinery")]


def _assert_quiet(records: list[logging.LogRecord], secret: str) -> None:
    for r in records:
        text = r.getMessage()
        assert r.exc_info is None, f"a traceback was logged: {text}"
        assert "unexpected error" not in text, text
        assert secret not in text, text


def test_server_down_at_start_is_one_clear_line_per_back_off_step(caplog: pytest.LogCaptureFixture) -> None:
    from conftest import free_port

    secret = "S3cr3t"
    port = free_port()
    records = _run_worker_for(f"redis://:{secret}@127.0.0.1:{port}/0", 4.0, caplog)
    _assert_quiet(records, secret)
    steps = [r for r in records if r.levelno == logging.WARNING and "cannot reach" in r.getMessage()]
    assert 3 <= len(steps) <= 8, [r.getMessage() for r in records]
    for r in steps:
        text = r.getMessage()
        assert f"redis://:***@127.0.0.1:{port}/0" in text and "Connection refused" in text and "again in" in text
    assert len(records) <= 15, "\n".join(r.getMessage() for r in records)


@pytest.mark.parametrize("password", ["wrong", ""])
def test_refused_credentials_are_said_once_and_not_retried_quickly(
    private_redis: Any, caplog: pytest.LogCaptureFixture, password: str
) -> None:
    private_redis.client().config_set("requirepass", "right-one")
    url = f"redis://:{password}@127.0.0.1:{private_redis.port}/0" if password else private_redis.url
    records = _run_worker_for(url, 3.0, caplog)
    _assert_quiet(records, "right-one")
    if password:
        _assert_quiet(records, password)
    refused = [r for r in records if "refused the credentials" in r.getMessage()]
    assert len(refused) == 1, "\n".join(r.getMessage() for r in records)
    text = refused[0].getMessage()
    assert refused[0].levelno == logging.ERROR
    assert "not a transient fault" in text and f"127.0.0.1:{private_redis.port}" in text
    assert "trying again in 60s" in text
    assert not [r for r in records if "cannot reach" in r.getMessage()], "an auth error was retried as transient"


def test_commands_are_packed_as_redis_py_packs_them(url: str, raw: redis.Redis) -> None:
    from machinery_redis.batch import _pack, round_trip

    key = f"k_{uuid.uuid4().hex}"
    conn = raw.connection_pool.get_connection()
    try:
        # the same bytes as redis-py's own packing, whichever path ``_pack`` takes
        same = [
            [("SET", key, b"\x00bytes\xff", "EX", 60), ("RPUSH", key + "l", "é", 5, 1.5)],
            [("ZADD", key + "z", 1700000000000000000, b"member")],
            [("SET", key, bytearray(b"array"))],  # hiredis takes no bytearray: redis-py packs it
            [("CONFIG GET", "maxmemory")],  # a two-word name: redis-py splits it
        ]
        for commands in same:
            assert b"".join(_pack(conn, commands)) == b"".join(conn.pack_commands(commands))
        # and Redis understands them
        replies = round_trip(conn, [("SET", key, bytearray(b"array")), ("GET", key), ("CONFIG GET", "maxmemory")])
        assert replies[:2] == [b"OK", b"array"] and b"maxmemory" in replies[2]
        with pytest.raises(redis.DataError):  # what redis-py says of a bool, not hiredis's TypeError
            _pack(conn, [("SET", key, True)])
        assert round_trip(conn, [("GET", key)]) == [b"array"]  # the connection is in step
    finally:
        raw.connection_pool.release(conn)
        raw.delete(key, key + "l", key + "z")


def test_a_message_read_ahead_keeps_its_place_when_the_worker_stops(server: Server, queue: str) -> None:
    """A warm shutdown gives back what the worker read ahead and never started to the head of the
    queue (``Broker.give_back``), ahead of what was published after it; ``nack`` would have put it
    at the tail, as Go's requeue does."""
    started, release = threading.Event(), threading.Event()
    ran: list[Any] = []

    @server.task("quick")
    def quick(n: int) -> int:
        ran.append(n)
        return n

    @server.task("block")
    def block() -> None:
        started.set()
        release.wait(10)

    worker = server.new_worker("keep-place", 1)
    worker.launch_in_background()
    try:
        for n in range(5):  # quick tasks: the worker reads one ahead
            assert server.send_task(Signature("quick", [n])).get(timeout=10) == n
        server.send_task(Signature("block"))
        assert started.wait(10)
        server.send_task(Signature("quick", [99]))
        wait_until(lambda: worker._dispatch.waiting == 1)  # 99 read ahead while "block" runs
        server.send_task(Signature("quick", [100]))  # behind it, in the queue
        worker.quit(wait=False)
        wait_until(lambda: worker._dispatch._stopping)
    finally:
        release.set()
        worker.quit(timeout=10)
    assert ran == [0, 1, 2, 3, 4]
    assert [s.args[0].value for s in server.get_pending_tasks(queue)] == [99, 100]
