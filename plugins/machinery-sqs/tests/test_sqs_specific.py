"""SQS- and DynamoDB-specific behaviour, against the real server behind ``AWS_ENDPOINT_URL``:
URL forms and options, Go's wire format, FIFO queues, ETAs beyond SQS's 15 minutes, visibility
extension, dead-lettering, DynamoDB's item layout, TTL filtering and missing tables."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import ACCOUNT, RUN, endpoint_ok, raw_client, table_options

from machinery import Server
from machinery.config import Config
from machinery.errors import BackendError, ConfigError, PublishError
from machinery.interfaces import Delivery
from machinery.plugin import eta_of
from machinery.plugins import get_plugin_host
from machinery.signature import Signature, decode_signature, encode_signature, new_uuid
from machinery.state import TaskResult
from machinery_sqs.backend import DynamoDBBackend
from machinery_sqs.broker import SQSBroker, publish_delay, redelay_seconds
from machinery_sqs.lock import DynamoDBLock

SQS = f"sqs://us-east-1/{ACCOUNT}"
GO_SQS = f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}"


def qname(suffix: str = "") -> str:
    return f"{RUN}_{uuid.uuid4().hex[:8]}{suffix}"


def config(queue: str, **sqs: Any) -> Config:
    return Config(
        default_queue=queue,
        transport_options={"sqs": {"visibility_timeout": 2, **sqs}, "dynamodb": table_options()},
    )


def publish(broker: SQSBroker, sig: Signature) -> Signature:
    sig.uuid = sig.uuid or new_uuid()
    broker.adjust_routing_key(sig)
    broker.publish(encode_signature(sig), sig)
    return sig


def take(broker: SQSBroker, queue: str, n: int = 1, timeout: float = 10.0, prefetch: int = 1) -> list[Delivery]:
    """Consume ``n`` deliveries (without acking them), then stop the generator."""
    stop = threading.Event()
    got: list[Delivery] = []
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    it = broker.consume(queue, prefetch=prefetch, stop=stop)
    try:
        for d in it:
            got.append(d)
            if len(got) >= n:
                break
    finally:
        it.close()
        timer.cancel()
    return got


def raw_receive(queue: str, wait: int = 1, **kw: Any) -> list[dict[str, Any]]:
    sqs = raw_client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    out = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=wait,
        MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"],
        **kw,
    )
    return list(out.get("Messages", []))


@pytest.fixture(autouse=True)
def _server(request: pytest.FixtureRequest) -> None:
    if "offline" not in request.keywords:
        endpoint_ok()


@pytest.fixture
def queue() -> str:
    return qname()


@pytest.fixture
def broker(queue: str) -> Iterator[SQSBroker]:
    b = SQSBroker(SQS, config(queue))
    yield b
    b.close()


# -- URLs, options, registration (no server needed) ----------------------------------------------


@pytest.mark.offline
def test_url_forms_and_registration() -> None:
    host = get_plugin_host()
    for url in (GO_SQS, SQS, "http://127.0.0.1:5000/123456789012"):
        assert host.broker_class(url) is SQSBroker
    for url in ("https://dynamodb.eu-west-1.amazonaws.com", "dynamodb://", "http://127.0.0.1:8000"):
        assert host.backend_class(url) is DynamoDBBackend
        assert host.lock_class(url) is DynamoDBLock
    go = SQSBroker(GO_SQS, Config())
    assert (go.target.region, go.target.endpoint_url) == ("us-east-1", "")
    assert go._queue_url("jobs") == f"{GO_SQS}/jobs"  # Go: broker URL + "/" + queue, no lookup
    local = SQSBroker("http://127.0.0.1:5000/123456789012", Config())
    assert local.target.endpoint_url == "http://127.0.0.1:5000"
    assert local._queue_url("jobs") == "http://127.0.0.1:5000/123456789012/jobs"
    vpc = SQSBroker("https://vpce-1.sqs.us-east-1.vpce.amazonaws.com/123456789012", Config())
    assert vpc.target.endpoint_url == "https://vpce-1.sqs.us-east-1.vpce.amazonaws.com"
    be = DynamoDBBackend("https://dynamodb.eu-west-1.amazonaws.com", Config())
    assert be.transport.target.region == "eu-west-1"
    assert (be.options.task_states_table, be.options.group_metas_table) == ("task_states", "group_metas")


@pytest.mark.offline
def test_bad_urls_and_options_fail_fast() -> None:
    with pytest.raises(ConfigError, match="credentials do not go in the URL") as exc:
        SQSBroker("https://AKIA:secret@sqs.us-east-1.amazonaws.com/1", Config())
    assert "secret" not in str(exc.value)
    with pytest.raises(ConfigError, match="not an AWS region"):
        SQSBroker("sqs://nowhere/1", Config())
    with pytest.raises(ConfigError, match="account-id"):
        SQSBroker("https://sqs.us-east-1.amazonaws.com", Config())
    with pytest.raises(ConfigError, match=r"sqs\.wait_time_seconds"):
        SQSBroker(SQS, Config(transport_options={"sqs": {"wait_time_seconds": 21}}))
    with pytest.raises(ConfigError, match=r"sqs\.bogus"):
        SQSBroker(SQS + "?bogus=1", Config())
    with pytest.raises(ConfigError, match=r"dynamodb\.task_states_table"):
        DynamoDBBackend("dynamodb://", Config(transport_options={"dynamodb": {"task_states_table": "a b"}}))
    with pytest.raises(ConfigError, match="not a valid SQS queue name"):
        SQSBroker(GO_SQS, Config())._queue_url("bad name")


@pytest.mark.offline
def test_go_config_keys_env_and_query_options() -> None:
    # Go's YAML keys are receive_wait_time_seconds / receive_visibility_timeout
    cfg = Config.from_mapping(
        {"broker": GO_SQS, "sqs": {"receive_wait_time_seconds": 20, "receive_visibility_timeout": 45}},
        known_sections={"sqs"},
    )
    opts = SQSBroker(cfg.broker, cfg).options
    assert (opts.wait_time_seconds, opts.visibility_timeout) == (20, 45)
    env = Config.from_env({"SQS_VISIBILITY_TIMEOUT": "7", "TASK_STATES_TABLE": "ts1", "GROUP_METAS_TABLE": "gm1"})
    assert SQSBroker(SQS, env).options.visibility_timeout == 7
    be = DynamoDBBackend("dynamodb://us-east-1", env)
    assert (be.options.task_states_table, be.options.group_metas_table) == ("ts1", "gm1")
    q = DynamoDBBackend("dynamodb://us-east-1?task_states_table=qq1&create_tables=true", env)
    assert q.options.task_states_table == "qq1" and q.options.create_tables is True


@pytest.mark.offline
def test_eta_arithmetic() -> None:
    assert publish_delay(-3, 900) == 0
    assert publish_delay(0.2, 900) == 1  # whole seconds, never early
    assert publish_delay(3 * 86400, 900) == 900  # SQS's 15-minute ceiling
    assert redelay_seconds(0.1, 0) == 1
    assert redelay_seconds(3600.2, 0) == 3601
    # three days away: hidden for just under 12 hours from the receive, then again
    assert redelay_seconds(3 * 86400, 0) == 43200 - 60
    assert redelay_seconds(3 * 86400, 600) == 43200 - 60 - 600
    eta = datetime(2030, 1, 2, 3, 4, 5, 123000, tzinfo=timezone.utc)
    nested = Signature("a", uuid="task_1", eta=eta, on_success=[Signature("b", uuid="task_2")])
    assert eta_of(encode_signature(nested)) == pytest.approx(eta.timestamp())
    assert eta_of(encode_signature(Signature("a", uuid="task_3", on_success=[nested]))) is None
    assert eta_of(b"not json") is None


# -- the wire --------------------------------------------------------------------------------------


def test_body_is_go_json_without_attributes(broker: SQSBroker, queue: str) -> None:
    sig = publish(broker, Signature("add", args=[1, 2], headers={"k": "v"}))
    (m,) = raw_receive(queue)
    assert m["Body"].encode() == encode_signature(sig)
    assert json.loads(m["Body"])["UUID"] == sig.uuid and "RoutingKey" in json.loads(m["Body"])
    assert not m.get("MessageAttributes")


def test_body_that_is_not_utf8_is_a_publish_error(broker: SQSBroker, queue: str) -> None:
    """SQS bodies are text: bytes that are not UTF-8 get a PublishError naming the task and why
    (found by the fault suite's fuzz; it was a raw UnicodeDecodeError), alone or in a batch."""
    sig = Signature("add", uuid=new_uuid(), routing_key=queue)
    with pytest.raises(PublishError, match=r"not UTF-8") as info:
        broker.publish(b"\xab\xcd", sig)
    assert info.value.task_uuid == sig.uuid and queue in str(info.value)
    with pytest.raises(PublishError, match=r"not UTF-8"):
        broker.publish_many([(encode_signature(sig), sig), (b"\xff", sig)])


def test_go_url_form_end_to_end(queue: str) -> None:
    b = SQSBroker(GO_SQS, config(queue))
    try:
        sig = publish(b, Signature("add", args=[1]))
        (d,) = take(b, queue)
        assert decode_signature(d.body).uuid == sig.uuid
        assert d.attributes["queue_url"] == f"{GO_SQS}/{queue}"
        b.ack(d)
        assert raw_receive(queue, wait=0) == []
    finally:
        b.close()


def test_user_supplied_client(queue: str) -> None:
    client = raw_client("sqs")
    cfg = Config(default_queue=queue, transport_options={"sqs": {"client": client}})
    b = SQSBroker(SQS, cfg)
    assert b._sqs() is client
    publish(b, Signature("add", args=[1]))
    (d,) = take(b, queue)
    b.ack(d)
    b.close()


def test_missing_queue_without_create(queue: str) -> None:
    b = SQSBroker(SQS, config(queue, create_queues=False))
    with pytest.raises(Exception, match=queue) as exc:
        publish(b, Signature("add"))
    assert "QueueDoesNotExist" in str(exc.value) or "NonExistentQueue" in str(exc.value)


def test_batch_send_and_receive(broker: SQSBroker, queue: str) -> None:
    sigs = [Signature("add", args=[i], uuid=new_uuid()) for i in range(23)]
    for s in sigs:
        broker.adjust_routing_key(s)
    broker.publish_many([(encode_signature(s), s) for s in sigs])
    got = take(broker, queue, n=23, prefetch=10)
    assert sorted(decode_signature(d.body).uuid for d in got) == sorted(s.uuid for s in sigs)
    for d in got:
        broker.ack(d)


# -- FIFO ------------------------------------------------------------------------------------------


def test_fifo_group_id_dedup_and_order() -> None:
    fifo = qname(".fifo")
    b = SQSBroker(SQS, config(fifo))
    try:
        with pytest.raises(PublishError, match="broker_message_group_id"):
            publish(b, Signature("add", args=[0]))
        sigs = [publish(b, Signature("add", args=[i], broker_message_group_id="g1")) for i in range(3)]
        b.publish(encode_signature(sigs[0]), sigs[0])  # the same message again: deduplicated
        retry = sigs[1].copy()
        retry.retry_count = 1  # same UUID, new body (a retry): not dropped as a duplicate
        b.publish(encode_signature(retry), retry)
        raw = raw_client("sqs")
        attrs = raw.get_queue_attributes(QueueUrl=b._queue_url(fifo), AttributeNames=["FifoQueue"])["Attributes"]
        assert attrs["FifoQueue"] == "true"
        got: list[Delivery] = []
        while len(got) < 4:
            (d,) = take(b, fifo)  # a FIFO group hands out the next message only after the ack
            got.append(d)
            b.ack(d)
        assert [decode_signature(d.body).uuid for d in got] == [s.uuid for s in sigs] + [sigs[1].uuid]
        assert all(d.attributes["attributes"]["MessageGroupId"] == "g1" for d in got)
        assert take(b, fifo, timeout=1.5) == []
    finally:
        b.close()


# -- ETA beyond the 15-minute limit ------------------------------------------------------------------


def test_eta_longer_than_max_delay_is_rehidden_and_runs_once(queue: str) -> None:
    """With the publish delay capped at 1 s (standing in for SQS's 900 s), a task due in 3.5 s is
    received early once, hidden again until its ETA, and then delivered once, not before."""
    b = SQSBroker(SQS, config(queue, max_delay_seconds=1))
    try:
        eta = datetime.now(timezone.utc) + timedelta(seconds=3.5)
        sig = publish(b, Signature("add", args=[1], eta=eta))
        got = take(b, queue, timeout=8.0)
        at = time.time()
        assert [decode_signature(d.body).uuid for d in got] == [sig.uuid]
        assert 0 <= at - eta.timestamp() <= 1.5
        assert int(got[0].attributes["attributes"]["ApproximateReceiveCount"]) == 2  # one hop
        b.ack(got[0])
        assert take(b, queue, timeout=1.5) == []
    finally:
        b.close()


# -- visibility --------------------------------------------------------------------------------------


@pytest.mark.parametrize("extend", [True, False])
def test_visibility_extended_while_task_runs(queue: str, extend: bool) -> None:
    """A message held for 5 s (visibility timeout 2 s) is not handed to a second consumer while
    the heartbeat extends it; without the heartbeat it is (which proves the test can fail)."""
    a = SQSBroker(SQS, config(queue, extend_visibility=extend))
    other = SQSBroker(SQS, config(queue))
    try:
        publish(a, Signature("add", args=[1]))
        (d,) = take(a, queue)
        seen = take(other, queue, timeout=5.0)
        if extend:
            assert seen == [], "a message in flight was delivered to a second consumer"
            a.ack(d)
        else:
            assert len(seen) == 1, "without extension the message should come back after 2 s"
            other.ack(seen[0])
    finally:
        a.close()
        other.close()


def test_nack_delay_and_stop_task_deletion(broker: SQSBroker, queue: str) -> None:
    publish(broker, Signature("add", args=[1], stop_task_deletion_on_error=True))
    (d,) = take(broker, queue)
    t0 = time.monotonic()
    broker.nack(d, requeue=False)  # Go: leave it; it returns after the visibility timeout
    (again,) = take(broker, queue, timeout=6.0)
    assert time.monotonic() - t0 >= 1.5
    assert again.redelivered
    broker.nack(again, requeue=True, delay=1.0)
    t0 = time.monotonic()
    (third,) = take(broker, queue, timeout=6.0)
    assert 0.9 <= time.monotonic() - t0 <= 3.0
    broker.ack(third)


def test_nack_without_requeue_dead_letters() -> None:
    raw = raw_client("sqs")
    dlq = qname("_dlq")
    dlq_url = raw.create_queue(QueueName=dlq)["QueueUrl"]
    dlq_arn = raw.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    main = qname()
    raw.create_queue(
        QueueName=main,
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})},
    )
    b = SQSBroker(SQS, config(main))
    try:
        route = Signature("add", routing_key=main)
        b.publish(b'{"not": "a task"', route)
        (d,) = take(b, main)
        b.nack(d, requeue=False)
        assert raw_receive(main, wait=0) == []
        (dead,) = raw_receive(dlq)
        assert dead["Body"] == '{"not": "a task"'
    finally:
        b.close()


def test_purge_leaves_messages_in_flight(broker: SQSBroker, queue: str) -> None:
    for i in range(3):
        publish(broker, Signature("add", args=[i]))
    (d,) = take(broker, queue)
    assert broker.purge(queue) == 2
    broker.ack(d)


# -- DynamoDB -------------------------------------------------------------------------------------


@pytest.fixture
def backend() -> DynamoDBBackend:
    return DynamoDBBackend("dynamodb://us-east-1", Config(transport_options={"dynamodb": table_options()}))


def test_item_layout_is_gos(backend: DynamoDBBackend) -> None:
    sig = Signature("add", uuid=new_uuid())
    backend.set_state_success(sig, [TaskResult("int64", 3), TaskResult("string", "x y"), TaskResult("[]int64", [1, 2])])
    backend.init_group("group_" + sig.uuid, [sig.uuid])
    db = raw_client("dynamodb")
    opts = table_options()
    item = db.get_item(TableName=opts["task_states_table"], Key={"TaskUUID": {"S": sig.uuid}})["Item"]
    assert set(item) == {"TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL"}
    assert item["State"] == {"S": "SUCCESS"} and item["TaskName"] == {"S": "add"}
    assert [r["M"] for r in item["Results"]["L"]] == [
        {"Type": {"S": "int64"}, "Value": {"S": "3"}},
        {"Type": {"S": "string"}, "Value": {"S": "x y"}},
        {"Type": {"S": "[]int64"}, "Value": {"S": "[1,2]"}},
    ]
    assert abs(int(item["TTL"]["N"]) - (time.time() + 3600)) < 5  # absolute expiry, for DynamoDB TTL
    group = db.get_item(TableName=opts["group_metas_table"], Key={"GroupUUID": {"S": "group_" + sig.uuid}})["Item"]
    assert group["TaskUUIDs"] == {"L": [{"S": sig.uuid}]} and group["ChordTriggered"] == {"BOOL": False}


def test_reads_items_written_by_go(backend: DynamoDBBackend) -> None:
    """Go's UpdateItem writes CreatedAt with time.String() and result values with %v."""
    uid = new_uuid()
    raw_client("dynamodb").put_item(
        TableName=table_options()["task_states_table"],
        Item={
            "TaskUUID": {"S": uid},
            "TaskName": {"S": "sum"},
            "State": {"S": "SUCCESS"},
            "CreatedAt": {"S": "2024-05-06 07:08:09.123456789 +0000 UTC m=+0.012"},
            "Results": {
                "L": [
                    {"M": {"Type": {"S": "int64"}, "Value": {"S": "42"}}},
                    {"M": {"Type": {"S": "[]int64"}, "Value": {"S": "[1 2 3]"}}},
                ]
            },
        },
    )
    st = backend.get_state(uid)
    assert st is not None and st.values == [42, [1, 2, 3]]
    assert st.created_at == datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)


def test_expired_items_are_ignored(backend: DynamoDBBackend) -> None:
    """DynamoDB (and moto) delete expired items lazily: reads filter on TTL themselves."""
    db = raw_client("dynamodb")
    opts = table_options()
    sig = Signature("add", uuid=new_uuid())
    backend.set_state_success(sig, [TaskResult("int64", 1)])
    group = new_uuid("group_")
    backend.init_group(group, [sig.uuid])
    past = {":t": {"N": str(int(time.time()) - 10)}}
    for table, key, uid in (
        (opts["task_states_table"], "TaskUUID", sig.uuid),
        (opts["group_metas_table"], "GroupUUID", group),
    ):
        db.update_item(
            TableName=table,
            Key={key: {"S": uid}},
            UpdateExpression="SET #t = :t",
            ExpressionAttributeNames={"#t": "TTL"},
            ExpressionAttributeValues=past,
        )
        assert "Item" in db.get_item(TableName=table, Key={key: {"S": uid}})  # still stored
    assert backend.get_state(sig.uuid) is None
    assert backend._load_states([sig.uuid]) == [None]
    assert backend.get_group_meta(group) is None
    assert backend.trigger_chord(group) is False


def test_missing_table_is_named() -> None:
    cfg = Config(transport_options={"dynamodb": {"task_states_table": f"{RUN}_absent"}})
    b = DynamoDBBackend("dynamodb://us-east-1", cfg)
    with pytest.raises(BackendError, match=f"{RUN}_absent.*does not exist.*TaskUUID.*create_tables"):
        b.get_state("task_x")
    lock = DynamoDBLock("dynamodb://us-east-1", Config(transport_options={"dynamodb": {"lock_table": f"{RUN}_nolock"}}))
    with pytest.raises(Exception, match=f"{RUN}_nolock.*does not exist"):
        lock.acquire("k", timedelta(seconds=1))


def test_create_tables_enables_ttl() -> None:
    prefix = f"{RUN}c{uuid.uuid4().hex[:4]}"
    b = DynamoDBBackend("dynamodb://us-east-1", Config(transport_options={"dynamodb": table_options(prefix)}))
    sig = Signature("add", uuid=new_uuid())
    b.set_state_pending(sig)
    assert b.get_state(sig.uuid) is not None
    db = raw_client("dynamodb")
    ttl = db.describe_time_to_live(TableName=f"{prefix}_task_states")["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] in ("ENABLED", "ENABLING") and ttl["AttributeName"] == "TTL"
    keys = db.describe_table(TableName=f"{prefix}_task_states")["Table"]["KeySchema"]
    assert keys == [{"AttributeName": "TaskUUID", "KeyType": "HASH"}]


def test_bulk_beyond_one_batch(backend: DynamoDBBackend) -> None:
    sigs = [Signature("add", uuid=new_uuid()) for _ in range(130)]
    backend.set_states_pending(sigs)
    uuids = [s.uuid for s in sigs]
    states = backend._load_states([*uuids, uuids[0]])
    assert [s.task_uuid if s else None for s in states] == [*uuids, uuids[0]]


def test_worker_on_sqs_and_dynamodb(queue: str) -> None:
    """A worker thread and a producer on Go's URL forms: a chord of three adds."""
    from machinery.workflow import Chord, Group

    cfg = Config(
        broker=GO_SQS,
        result_backend="https://dynamodb.us-east-1.amazonaws.com",
        default_queue=queue,
        no_unix_signals=True,
        transport_options={"sqs": {"visibility_timeout": 5}, "dynamodb": table_options()},
    )
    server = Server(cfg)

    def add(*xs: int) -> int:
        return sum(xs)

    server.register_task("add", add)
    worker = server.new_worker("t", 4)
    worker.launch_in_background()
    try:
        group = Group(*(Signature("add", args=[i, i]) for i in range(3)))
        result = server.send_chord(Chord(group, Signature("add")))
        assert result.get(timeout=20) == 6
    finally:
        worker.quit(timeout=10)
        server.close()


def test_backend_and_lock_share_one_dynamodb_transport() -> None:
    """One transport per service, URL and configuration: the lock and the backend on one
    DynamoDB share its client and tables; the SQS broker has its own; the last close frees them."""
    from machinery_sqs.transport import DynamoDBTransport, SQSTransport

    cfg = Config(broker=GO_SQS, result_backend="dynamodb://us-east-1", lock="dynamodb://us-east-1")
    server = Server(cfg)
    assert isinstance(server.broker.transport, SQSTransport)
    assert isinstance(server.backend.transport, DynamoDBTransport)
    assert server.lock.transport is server.backend.transport  # by construction
    transport = server.backend.transport
    assert transport.holders == 2
    server.close()
    assert transport.holders == 0 and not transport.is_open


def test_lock_release_whose_first_answer_was_lost_counts_as_released() -> None:
    """A release the client sent twice (the first answer lost: a dropped connection, a 5xx)
    deleted the item the first time; the retry fails its condition, and that is still a release.
    A release that fails its condition without a retry stays False."""
    lock = DynamoDBLock("dynamodb://us-east-1", Config(transport_options={"dynamodb": table_options()}))
    key = f"{RUN}_lost_answer_{uuid.uuid4().hex[:8]}"
    assert lock.acquire(key, timedelta(seconds=30))
    client = lock.tables.db(lock._table)
    sent: list[int] = []

    def retry_once(attempts: int, **_: Any) -> float | None:
        sent.append(attempts)
        return 0 if sent == [1] else None  # as if the first call's first answer never came

    client.meta.events.register_first("needs-retry.dynamodb.DeleteItem", retry_once)
    try:
        assert lock.release(key) is True
        assert sent == [1, 2]  # the delete went out twice and the first one deleted the item
        assert lock.release(key) is False  # not held, and no retry this time
        assert sent == [1, 2, 1]
        other = DynamoDBLock("dynamodb://us-east-1", Config(transport_options={"dynamodb": table_options()}))
        assert other.acquire(key, timedelta(seconds=30))  # the key is free again
        assert other.release(key)
        other.close()
    finally:
        client.meta.events.unregister("needs-retry.dynamodb.DeleteItem", retry_once)
        lock.close()
