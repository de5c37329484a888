"""RabbitMQ-specific behaviour: Go declarations and wire format, delay queues, priorities,
quorum queues, confirms, failover, reconnects and the AMQP backend's Go layout."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pika
import pika.exceptions as pex
import pytest
from conftest import amqp_url, delete_queues, queue_depth, raw_channel, ready_count

from machinery import Server
from machinery.config import Config
from machinery.errors import BrokerAuthenticationError, BrokerConnectionError, ConfigError
from machinery.interfaces import Delivery
from machinery.signature import Signature, encode_signature, new_uuid, results_for
from machinery.worker import Worker
from machinery_amqp.backend import AMQPBackend
from machinery_amqp.broker import AMQPBroker


def _config(queue: str, **amqp: Any) -> Config:
    return Config(
        broker=amqp_url(),
        default_queue=queue,
        results_expire_in=120,
        no_unix_signals=True,
        transport_options={"amqp": {"binding_key": queue, **amqp}},
    )


@pytest.fixture
def queue(url: str) -> Iterator[str]:
    name = f"mt_amqp_{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(Exception):
        delete_queues(name, f"{name}_custom")


@pytest.fixture
def make_broker(queue: str) -> Iterator[Callable[..., AMQPBroker]]:
    made: list[AMQPBroker] = []

    def make(url: str | None = None, config: Config | None = None, **amqp: Any) -> AMQPBroker:
        b = AMQPBroker(url or amqp_url(), config or _config(queue, **amqp))
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def _publish(broker: AMQPBroker, sig: Signature) -> Signature:
    sig.uuid = sig.uuid or new_uuid()
    broker.adjust_routing_key(sig)
    broker.publish(encode_signature(sig), sig)
    return sig


def _take(
    broker: AMQPBroker, queue: str, n: int, timeout: float = 10.0, prefetch: int = 10, ack: bool = False
) -> list[Delivery]:
    stop = threading.Event()
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    it = broker.consume(queue, prefetch=prefetch, stop=stop)
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        for d in it:
            got.append(d)
            if ack:
                broker.ack(d)
            if len(got) >= n or time.monotonic() > deadline:
                break
    finally:
        timer.cancel()
        it.close()  # type: ignore[attr-defined]
    return got


# -- configuration ------------------------------------------------------------------------------


def test_go_defaults_and_env_names() -> None:
    b = AMQPBroker("amqp://guest:guest@127.0.0.1:5672/", Config(default_queue="machinery_tasks"))
    o = b.options
    assert (o.exchange, o.exchange_type, o.binding_key) == ("machinery_exchange", "direct", "machinery_task")
    sig = Signature("add")
    b.adjust_routing_key(sig)
    assert sig.routing_key == "machinery_task" and b.queue_for(sig) == "machinery_tasks"
    topic = AMQPBroker("amqp://127.0.0.1/", Config(transport_options={"amqp": {"exchange_type": "topic"}}))
    s2 = Signature("add")
    topic.adjust_routing_key(s2)
    assert s2.routing_key == "machinery_tasks"  # Go: non-direct exchanges route by the default queue
    for var in ("AMQP_EXCHANGE", "AMQP_EXCHANGE_TYPE", "AMQP_BINDING_KEY", "AMQP_PREFETCH_COUNT"):
        assert var in AMQPBroker.env_options
    env = {"AMQP_EXCHANGE": "ex", "AMQP_PREFETCH_COUNT": "7", "AMQP_QUEUE_DECLARE_ARGS": "x-max-priority:5"}
    cfg = Config.from_env(env)
    b2 = AMQPBroker("amqp://127.0.0.1/", cfg)
    assert (b2.options.exchange, b2.options.prefetch_count) == ("ex", 7)
    assert b2.options.task_queue_args == {"x-max-priority": 5} and b2.supports_priority


@pytest.mark.parametrize(
    ("url", "amqp", "match"),
    [
        ("redis://127.0.0.1/", {}, "not an AMQP URL"),
        ("amqp://127.0.0.1/", {"exchange_type": "fan"}, "exchange_type"),
        ("amqp://127.0.0.1/", {"nope": 1}, "unknown option"),
        ("amqp://127.0.0.1/", {"queue_type": "quorum", "max_priority": 5}, "quorum"),
        ("amqp://127.0.0.1/", {"queue_declare_args": "broken"}, "key:value"),
    ],
)
def test_bad_config_fails_fast(url: str, amqp: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AMQPBroker(url, Config(transport_options={"amqp": amqp}))


def test_credentials_not_in_errors() -> None:
    b = AMQPBroker("amqp://user:s3cret@127.0.0.1:1/", Config(default_queue="q"))
    with pytest.raises(BrokerConnectionError) as info:
        _publish(b, Signature("add"))
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(b)
    b.close()


def test_refused_credentials_are_not_retried_as_transient(caplog: pytest.LogCaptureFixture) -> None:
    # issue 17, D3: a worker with a wrong password says once, at ERROR, without a traceback, that
    # the credentials were refused and that this is not transient, then waits long (60 s)
    import logging
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(amqp_url())
    host = parts.hostname or "127.0.0.1"
    wrong = urlunsplit(parts._replace(netloc=f"{parts.username or 'guest'}:Wr0ngPw@{host}:{parts.port or 5672}"))
    caplog.set_level(logging.INFO, logger="machinery")
    srv = Server(Config(broker=wrong, result_backend="memory://amqp-auth", lock="memory://amqp-auth"))
    worker = srv.new_worker("auth", 1)
    worker.launch_in_background()
    time.sleep(3)
    worker.quit(timeout=10)
    srv.close()
    records = [r for r in caplog.records if r.name.startswith("machinery")]
    assert all(r.exc_info is None and "Wr0ngPw" not in r.getMessage() for r in records)
    refused = [r for r in records if "refused the credentials" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in records]
    assert refused[0].levelno == logging.ERROR and "not a transient fault" in refused[0].getMessage()
    with pytest.raises(BrokerAuthenticationError):
        _publish(AMQPBroker(wrong, Config(default_queue="q")), Signature("add"))


# -- Go compatibility ---------------------------------------------------------------------------


def test_go_format_message_run_by_python_worker(queue: str) -> None:
    """A message exactly as Go Machinery publishes it (its JSON, its exchange, queue and binding
    declarations, its properties), sent with raw pika, is run by a Python worker."""
    task_uuid = f"task_{uuid.uuid4()}"
    body = (
        (
            '{"UUID":"UUID_HERE","Name":"add","RoutingKey":"QUEUE_HERE","ETA":null,"GroupUUID":"","GroupTaskCount":0,'
            '"Args":[{"Name":"","Type":"int64","Value":2},{"Name":"","Type":"int64","Value":40}],'
            '"Headers":{},"Priority":0,"Immutable":false,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,'
            '"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
            '"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}'
        )
        .replace("UUID_HERE", task_uuid)
        .replace("QUEUE_HERE", queue)
    )
    with raw_channel() as ch:  # Go's Connect(): exchange, durable queue, binding, confirms
        ch.exchange_declare("machinery_exchange", "direct", durable=True, auto_delete=False)
        ch.queue_declare(queue, durable=True, auto_delete=False)
        ch.queue_bind(queue, "machinery_exchange", queue)
        ch.confirm_delivery()
        props = pika.BasicProperties(headers={}, content_type="application/json", priority=0, delivery_mode=2)
        ch.basic_publish("machinery_exchange", queue, body.encode(), props)
    server = Server(_config(queue).replace(result_backend="memory://" + queue))

    @server.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    worker = Worker(server, "go-compat", 2).launch_in_background()
    try:
        st = server.backend.wait_for(task_uuid, timeout=15)
        assert st is not None and st.is_success and st.values == [42]
    finally:
        worker.quit()
        server.close()


def test_declarations_match_go(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    """Go's own declarations of the same exchange, queue and delay queue are accepted as
    equivalent (no PRECONDITION_FAILED), so Go and Python share one RabbitMQ."""
    b = make_broker()
    _publish(b, Signature("add", [1]))
    ms = 60_000
    specs, out = b._delay_plan(b"{}", "machinery_exchange", queue, ms, b._properties(Signature("add")), "")
    b._declarer.declare(specs, force=True)
    assert out.routing_key == f"delay.{ms}.machinery_exchange.{queue}"
    with raw_channel() as ch:
        ch.exchange_declare("machinery_exchange", "direct", durable=True, auto_delete=False)
        ch.queue_declare(queue, durable=True, auto_delete=False)
        ch.queue_declare(
            out.routing_key,
            durable=True,
            auto_delete=False,
            arguments={
                "x-dead-letter-exchange": "machinery_exchange",
                "x-dead-letter-routing-key": queue,
                "x-message-ttl": ms,
                "x-expires": ms * 2,
            },
        )
        ch.queue_delete(out.routing_key)
    assert ready_count(queue) == 1


# -- publishing ---------------------------------------------------------------------------------


def test_message_properties(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    b = make_broker(max_priority=9)
    sig = _publish(b, Signature("add", [1], headers={"trace": "abc", "n": 1, "f": 0.5}, priority=4))
    with raw_channel() as ch:
        method, props, body = ch.basic_get(queue, auto_ack=True)
    assert method is not None and json.loads(body)["UUID"] == sig.uuid
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    assert props.priority == 4 and props.headers == {"trace": "abc", "n": 1, "f": "0.5"}


def test_priority_with_max_priority(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    b = make_broker(max_priority=10)
    low = [_publish(b, Signature("add", [i], priority=1)).uuid for i in range(3)]
    high = [_publish(b, Signature("add", [i], priority=8)).uuid for i in range(3)]
    got = _take(b, queue, 6, prefetch=1, ack=True)
    order = [json.loads(d.body)["UUID"] for d in got]
    assert set(order[:3]) == set(high) and set(order[3:]) == set(low)


def test_publish_many_batches_confirms(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    b = make_broker()
    sigs = [Signature("add", [i], uuid=new_uuid(), routing_key=queue) for i in range(2000)]
    t0 = time.perf_counter()
    b.publish_many([(encode_signature(s), s) for s in sigs])
    elapsed = time.perf_counter() - t0
    assert ready_count(queue) == 2000
    assert elapsed < 10, f"2000 confirmed publishes took {elapsed:.1f}s"


def test_publish_from_many_threads(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    b = make_broker()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for i in range(50):
                _publish(b, Signature("add", [i]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and ready_count(queue) == 400


def test_queue_deleted_behind_our_back_is_redeclared(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    """Mandatory publishing: a message that would be unroutable is not silently lost."""
    b = make_broker()
    _publish(b, Signature("add", [1]))
    delete_queues(queue)
    _publish(b, Signature("add", [2]))
    assert ready_count(queue) == 1


def test_unreachable_broker_is_a_clear_error() -> None:
    b = AMQPBroker("amqp://guest:guest@127.0.0.1:1/", Config(default_queue="q"))
    t0 = time.monotonic()
    with pytest.raises(BrokerConnectionError, match=r"127\.0\.0\.1:1"):
        _publish(b, Signature("add"))
    assert time.monotonic() - t0 < 10
    b.close()


def test_failover_to_second_url(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    urls = f"amqp://guest:guest@127.0.0.1:1/|{amqp_url()}"
    cfg = _config(queue).replace(multiple_broker_separator="|")
    b = make_broker(urls, cfg)
    _publish(b, Signature("add", [1]))
    got = _take(b, queue, 1)
    assert len(got) == 1
    b.ack(got[0])


# -- delays -------------------------------------------------------------------------------------


def test_eta_via_go_delay_queue(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    b = make_broker()
    sig = Signature("add", [1], eta=datetime.now(timezone.utc) + timedelta(seconds=1.2))
    _publish(b, sig)
    assert ready_count(queue) == 0  # held in delay.<ms>.machinery_exchange.<queue>, not in the task queue
    t0 = time.monotonic()
    got = _take(b, queue, 1, timeout=10)
    assert got and json.loads(got[0].body)["UUID"] == sig.uuid
    assert datetime.now(timezone.utc) >= sig.eta  # type: ignore[operator]
    assert time.monotonic() - t0 < 3
    b.ack(got[0])


def test_delayed_message_goes_through_the_exchange_like_go(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    """Go's ``delay()`` (``v2/brokers/amqp/amqp.go``) binds ``delay.<ms>.<exchange>.<routing key>``
    to the exchange with the queue's own name as binding key and publishes through the exchange
    with that routing key, with no priority."""
    b = make_broker()
    sig = Signature("add", [1], eta=datetime.now(timezone.utc) + timedelta(seconds=30))
    _publish(b, sig)
    with raw_channel() as ch:
        method, props, body = None, None, b""
        deadline = time.monotonic() + 5
        names: list[str] = []
        while method is None and time.monotonic() < deadline:
            for ms in range(30000, 29000, -1):  # the delay in ms, truncated at publish time
                name = f"delay.{ms}.machinery_exchange.{queue}"
                try:
                    ch.queue_declare(name, passive=True)
                except pex.ChannelClosedByBroker:
                    ch = ch.connection.channel()
                    continue
                names.append(name)
                method, props, body = ch.basic_get(name, auto_ack=False)
                break
        assert method is not None, "no delay queue holds the message"
        assert method.exchange == "machinery_exchange" and method.routing_key == names[0]
        assert props.priority is None and json.loads(body)["UUID"] == sig.uuid
        ch.basic_nack(method.delivery_tag, requeue=False)
        delete_queues(names[0])


def test_priority_zero_is_not_sent(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    """Go's amqp091 publishes ``Priority: signature.Priority`` and leaves a 0 off the wire."""
    b = make_broker()
    _publish(b, Signature("add", [1]))
    with raw_channel() as ch:
        method, props, _body = ch.basic_get(queue, auto_ack=True)
    assert method is not None and props.priority is None


def test_nack_with_delay_republishes_then_acks(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    b = make_broker()
    sig = _publish(b, Signature("add", [1]))
    (d,) = _take(b, queue, 1)
    wait = time.monotonic()
    b.nack(d, delay=2.0)
    time.sleep(0.5)  # the consumer has closed: an unacknowledged original would be ready again
    assert ready_count(queue) == 0  # the original is acknowledged, the copy waits in a delay queue
    (again,) = _take(b, queue, 1)
    assert json.loads(again.body)["UUID"] == sig.uuid and time.monotonic() - wait >= 1.9
    b.ack(again)


def test_quorum_queue(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    b = make_broker(queue_type="quorum")
    _publish(b, Signature("add", [1]))
    with raw_channel() as ch, pytest.raises(pex.ChannelClosedByBroker, match="x-queue-type"):
        ch.queue_declare(queue, durable=True)  # a classic declaration of it is refused: it is quorum
    (d,) = _take(b, queue, 1)
    b.nack(d, requeue=True)
    (d2,) = _take(b, queue, 1)
    assert d2.redelivered and d2.attributes["headers"].get("x-delivery-count", 0) >= 1
    b.ack(d2)


# -- consuming and reconnecting -----------------------------------------------------------------


class _Proxy:
    """A TCP proxy to RabbitMQ whose connections the test can cut (a dropped network / a
    RabbitMQ restart as the client sees it), without touching the shared server."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.accepting = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.accepting:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.sock.close()
        self.cut()


def test_consumer_reconnects_and_unacked_is_redelivered(
    queue: str, make_broker: Callable[..., AMQPBroker], caplog: pytest.LogCaptureFixture
) -> None:
    """The connection drops while a task is in flight: its ack cannot be sent (logged), RabbitMQ
    redelivers it, and the consumer reconnects with back-off and goes on."""
    p = pika.URLParameters(amqp_url())
    proxy = _Proxy((p.host, p.port))
    try:
        via = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        b = make_broker(via)
        producer = make_broker()
        first = _publish(producer, Signature("add", [1]))
        stop = threading.Event()
        seen: list[Delivery] = []
        it = b.consume(queue, prefetch=2, stop=stop)

        def run() -> None:
            for d in it:
                seen.append(d)
                if json.loads(d.body)["UUID"] != first.uuid or len(seen) > 1:
                    b.ack(d)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen, "first delivery not received"
        proxy.cut()  # the task is "running": its delivery is unacknowledged
        time.sleep(0.3)
        b.ack(seen[0])  # too late: the channel it came on is gone
        second = _publish(producer, Signature("add", [2]))
        deadline = time.monotonic() + 15
        uuids: list[str] = []
        while time.monotonic() < deadline:
            uuids = [json.loads(d.body)["UUID"] for d in seen]
            if uuids.count(first.uuid) == 2 and second.uuid in uuids:
                break
            time.sleep(0.05)
        assert uuids.count(first.uuid) == 2, f"in-flight task not redelivered: {uuids}"
        assert second.uuid in uuids
        assert any(d.redelivered for d in seen[1:])
        assert "redeliver" in caplog.text
        stop.set()
        t.join(5)
        assert not t.is_alive()
        assert queue_depth(queue) == 0
    finally:
        proxy.close()


def test_connection_closed_inside_a_settlement_reconnects(
    queue: str, make_broker: Callable[..., AMQPBroker], caplog: pytest.LogCaptureFixture
) -> None:
    """The consumer's connection closes inside a callback of its own I/O thread (as when an
    acknowledgement meets a socket RabbitMQ has just dropped, in a broker restart): pika then
    fails the next ``process_data_events`` with a ValueError, not a connection error. The
    consumer must reconnect and go on (it used to die, and the worker never ran another task),
    and the unacknowledged message comes back."""
    b = make_broker()
    first = _publish(b, Signature("add", [1]))
    stop = threading.Event()
    it = b.consume(queue, prefetch=1, stop=stop)
    d = next(it)
    assert json.loads(d.body)["UUID"] == first.uuid
    consumer = b._PushBroker__subs[queue][1]  # type: ignore[attr-defined]
    consumer.settle(d.tag, "close", lambda ch: ch.connection.close())
    second = _publish(b, Signature("add", [2]))
    got: list[Delivery] = []
    done = threading.Event()

    def run() -> None:
        for x in it:
            got.append(x)
            b.ack(x)
            if len(got) == 2:
                done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(15), f"the consumer did not carry on after its connection closed: {len(got)} received"
    uuids = sorted(json.loads(x.body)["UUID"] for x in got)
    assert uuids == sorted([first.uuid, second.uuid])
    stop.set()
    assert _wait_depth(queue, 0) == 0


def _wait_depth(queue: str, want: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    depth = queue_depth(queue)
    while depth != want and time.monotonic() < deadline:
        time.sleep(0.1)
        depth = queue_depth(queue)
    return depth


def test_qos_default_and_out_of_order_acks(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    """basic.qos defaults to 4 x prefetch; acknowledgements coalesced in the I/O thread (one
    ``multiple`` ack for contiguous tags) settle exactly the messages acknowledged, never an
    earlier one still running, and the unacknowledged come back when the consumer goes."""
    b = make_broker()
    for i in range(10):
        _publish(b, Signature("add", [i]))
    stop = threading.Event()
    it = b.consume(queue, prefetch=2, stop=stop)
    got = [next(it) for _ in range(8)]
    deadline = time.monotonic() + 5
    while ready_count(queue) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready_count(queue) == 2  # 8 = 4 x 2 delivered, unacknowledged
    for i in (1, 2, 5):  # the first delivery is still running: no multiple ack may cover it
        b.ack(got[i])
    assert _wait_depth(queue, 7) == 7
    for i in (0, 3, 4):
        b.ack(got[i])
    assert _wait_depth(queue, 4) == 4  # got[6], got[7] unacknowledged, 2 ready
    stop.set()
    with contextlib.suppress(StopIteration):
        next(it)
    it.close()  # type: ignore[attr-defined]
    b.close()
    deadline = time.monotonic() + 10
    while ready_count(queue) != 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready_count(queue) == 4


def test_stop_requeues_prefetched(queue: str, make_broker: Callable[..., AMQPBroker]) -> None:
    b = make_broker()
    for i in range(5):
        _publish(b, Signature("add", [i]))
    stop = threading.Event()
    it = b.consume(queue, prefetch=5, stop=stop)
    d = next(it)
    time.sleep(0.3)  # the other four are prefetched into the local buffer
    stop.set()
    t0 = time.monotonic()
    with contextlib.suppress(StopIteration):
        next(it)
    assert time.monotonic() - t0 < 1.5
    it.close()  # type: ignore[attr-defined]
    time.sleep(0.5)
    assert ready_count(queue) == 4  # unyielded messages went back at once
    b.ack(d)
    deadline = time.monotonic() + 5
    while queue_depth(queue) != 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert queue_depth(queue) == 4


# -- backend ------------------------------------------------------------------------------------


def test_backend_go_layout_and_group_queue(queue: str) -> None:
    cfg = _config(queue)
    be = AMQPBackend(amqp_url(), cfg)
    try:
        group = new_uuid("group_")
        sigs = [Signature("add", uuid=new_uuid(), group_uuid=group, group_task_count=2) for _ in range(2)]
        be.init_group(group, [s.uuid for s in sigs])
        be.set_states_pending(sigs)
        be.set_state_success(sigs[0], results_for(1))
        assert not be.group_completed(group, 2)
        be.set_state_failure(sigs[1], "boom")
        assert be.group_completed(group, 2)
        with raw_channel() as ch:  # Go's declaration of a task state queue is equivalent
            ch.queue_declare(
                sigs[0].uuid,
                durable=False,
                auto_delete=True,
                arguments={"x-message-ttl": 120_000, "x-expires": 120_000},
            )
            assert ch.queue_declare(group, passive=True).method.message_count == 2  # Go's completions
        assert be.trigger_chord(group) and not be.trigger_chord(group)
        with raw_channel() as ch:  # Go's TriggerChord sees the marker queue and does not fire again
            ch.queue_declare(f"{group}_chord_triggered", passive=True)
        st = be.get_state(sigs[0].uuid)
        assert st is not None and st.is_success and st.values == [1]
        assert be.get_state(sigs[0].uuid) is not None, "reads must not consume the state"
        be.purge_group_meta(group)
        for s in sigs:
            be.purge_state(s.uuid)
    finally:
        be.close()


def test_concurrent_readers_never_see_an_older_state(queue: str) -> None:
    # A task's queue holds every state written since the last read (PENDING ... SUCCESS). Readers
    # take messages from the head, unacknowledged: one that found the queue dry before the
    # newest used to answer with an older state (a chord's last members then both saw the group
    # unfinished and nobody sent the callback). Each round: five states, then 8 readers at once.
    cfg = _config(queue)
    readers = [AMQPBackend(amqp_url(), cfg) for _ in range(8)]
    writer = AMQPBackend(amqp_url(), cfg)
    stale: list[str] = []
    try:
        for _round in range(15):
            sig = Signature("add", uuid=new_uuid())
            writer.set_state_pending(sig)
            writer.set_state_received(sig)
            writer.set_state_started(sig)
            writer.set_state_retry(sig)
            writer.set_state_success(sig, results_for(1))
            barrier = threading.Barrier(len(readers))

            def read(be: AMQPBackend, uuid: str = sig.uuid, barrier: threading.Barrier = barrier) -> None:
                barrier.wait(10)
                st = be.get_state(uuid)
                if st is None or not st.is_success:
                    stale.append(st.state if st is not None else "none")

            threads = [threading.Thread(target=read, args=(be,)) for be in readers]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            writer.purge_state(sig.uuid)
        assert not stale, f"{len(stale)} reads of 120 saw an older state: {sorted(set(stale))}"
    finally:
        for be in (*readers, writer):
            be.close()


_GO_MEMBER = (
    '{"UUID":"%(uuid)s","Name":"add","RoutingKey":"%(queue)s","ETA":null,"GroupUUID":"%(group)s",'
    '"GroupTaskCount":%(count)d,"Args":[{"Name":"","Type":"int64","Value":%(a)d},'
    '{"Name":"","Type":"int64","Value":%(a)d}],"Headers":{},"Priority":0,"Immutable":false,"RetryCount":0,'
    '"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":{"UUID":"%(cb)s","Name":"total",'
    '"RoutingKey":"","ETA":null,"GroupUUID":"","GroupTaskCount":0,"Args":null,"Headers":{},"Priority":0,'
    '"Immutable":false,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null,'
    '"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
    '"IgnoreWhenTaskNotRegistered":false},"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
    '"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}'
)


def test_chord_from_a_go_producer_without_group_record_fires_once(queue: str) -> None:
    """Go's AMQP backend writes no group record (``v2/backends/amqp/amqp.go``: ``InitGroup``
    returns nil); completion is the message count of the queue named after the group, fed by
    each member's completion (``markTaskCompleted``). A chord published the Go way (raw Go JSON,
    Go's SendGroup: PENDING states only, no ``<group>_meta``) fires exactly once on two Python
    workers with the AMQP result backend, and leaves Go's marker queue ``<group>_chord_triggered``."""
    group, cb = new_uuid("group_"), new_uuid("chord_")
    n = 8
    uuids = [new_uuid() for _ in range(n)]
    cfg = _config(queue).replace(result_backend=amqp_url())
    with raw_channel() as ch:
        ch.exchange_declare("machinery_exchange", "direct", durable=True, auto_delete=False)
        ch.queue_declare(queue, durable=True, auto_delete=False)
        ch.queue_bind(queue, "machinery_exchange", queue)
        ch.confirm_delivery()
        props = pika.BasicProperties(headers={}, content_type="application/json", delivery_mode=2)
        for i, u in enumerate(uuids):
            body = _GO_MEMBER % {"uuid": u, "queue": queue, "group": group, "count": n, "a": i, "cb": cb}
            ch.basic_publish("machinery_exchange", queue, body.encode(), props)
    runs: list[tuple[int, ...]] = []
    servers, workers = [], []
    for tag in ("w1", "w2"):
        server = Server(cfg)

        @server.task(name="add")
        def add(a: int, b: int) -> int:
            return a + b

        @server.task(name="total")
        def total(*xs: int) -> int:
            runs.append(xs)
            return sum(xs)

        servers.append(server)
        workers.append(Worker(server, tag, 4).launch_in_background())
    try:
        st = servers[0].backend.wait_for(cb, timeout=30)
        assert st is not None and st.is_success, st
        assert st.values == [sum(2 * i for i in range(n))]
        time.sleep(1.0)  # any second firing would show now
        assert len(runs) == 1 and sorted(runs[0]) == [2 * i for i in range(n)]  # completion order
        with raw_channel() as ch:
            assert ch.queue_declare(f"{group}_chord_triggered", passive=True).method.message_count == 1
            with pytest.raises(pex.ChannelClosedByBroker):
                ch.queue_declare(f"{group}_meta", passive=True)  # nothing Go does not write
    finally:
        for w in workers:
            w.quit()
        for s in servers:
            s.backend.purge_group_meta(group)
            s.close()


def test_chord_trigger_is_first_wins_without_a_group_record(queue: str) -> None:
    """``<group>_chord_triggered`` takes one message (reject-publish): of 16 concurrent Python
    triggers on a group no Python producer recorded, exactly one wins; a Go worker's
    ``TriggerChord`` (passive declare of that queue) then returns false."""
    be = AMQPBackend(amqp_url(), _config(queue))
    group = new_uuid("group_")
    member = Signature("add", uuid=new_uuid(), group_uuid=group, group_task_count=1)
    be.set_state_success(member, results_for(1))  # Go's completion message: the group is known
    try:
        wins: list[bool] = []
        barrier = threading.Barrier(16)

        def race() -> None:
            barrier.wait()
            wins.append(be.trigger_chord(group))

        threads = [threading.Thread(target=race) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wins.count(True) == 1 and len(wins) == 16
        with raw_channel() as ch:
            ch.queue_declare(f"{group}_chord_triggered", passive=True)
    finally:
        be.purge_group_meta(group)
        be.purge_state(member.uuid)
        be.close()


def test_broker_and_backend_share_one_transport() -> None:
    """The URL and the ``amqp:`` section are parsed once, by the transport both roles come from;
    each role's connections still carry its own name (pika connections stay per role)."""
    from machinery_amqp.transport import AMQPTransport

    url = "amqp://guest:guest@127.0.0.1:5672/%2F"
    server = Server(Config(broker=url, transport_options={"amqp": {"exchange": "shared_x"}}))
    transport = server.broker.transport
    assert isinstance(transport, AMQPTransport) and server.backend.transport is transport
    assert server.broker.options is server.backend.options is transport.options
    names = [p.client_properties["connection_name"] for p in transport.params_for("backend")]
    assert names and all(n.startswith("machinery-amqp backend") for n in names)
    server.close()
    assert transport.holders == 0
