"""Pub/Sub-specific behaviour, against Google's Pub/Sub emulator (no fakes).

Covers URL and option parsing, subscription naming, Go-compatible message data, error
translation, flow control, lease extension past the ack deadline, ETA re-delay through the ack
deadline, ordering keys, dead-lettering, purge, user-supplied clients and clean shutdown.
"""

from __future__ import annotations

import json
import queue as _queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.pubsub_v1 import PublisherClient, SubscriberClient

from machinery import Config, Signature
from machinery.errors import BrokerConnectionError, BrokerError, ConfigError, PublishError
from machinery.interfaces import Delivery
from machinery.plugins import get_plugin_host
from machinery.signature import decode_signature, encode_signature
from machinery_gcp.broker import GCPPubSubBroker, GCPPubSubError, GCPPubSubOptions, parse_url
from machinery_gcp.transport import translate

# -- helpers -------------------------------------------------------------------------------------


def make_broker(url: str, queue: str, **options: Any) -> GCPPubSubBroker:
    opts = {"create_missing": True, "ack_deadline": 10, **options}
    return GCPPubSubBroker(url, Config(broker=url, default_queue=queue, transport_options={"gcp_pubsub": opts}))


def sig(queue: str = "", eta: datetime | None = None, **kw: Any) -> Signature:
    return Signature("add", [1, 2], uuid=f"task_{uuid.uuid4()}", routing_key=queue, eta=eta, **kw)


def publish(broker: GCPPubSubBroker, s: Signature) -> None:
    broker.adjust_routing_key(s)
    broker.publish(encode_signature(s), s)


class Pump:
    """Drives ``consume`` in a thread; :meth:`take` advances it by one delivery."""

    def __init__(self, broker: GCPPubSubBroker, queue: str, prefetch: int = 1) -> None:
        self.broker = broker
        self.stop_event = threading.Event()
        self.done = threading.Event()
        self._want = threading.Semaphore(0)
        self._out: _queue.SimpleQueue[Delivery] = _queue.SimpleQueue()
        self._it = broker.consume(queue, prefetch=prefetch, stop=self.stop_event)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self.stop_event.is_set():
                if not self._want.acquire(timeout=0.05):
                    continue
                try:
                    self._out.put(next(self._it))
                except StopIteration:
                    return
        finally:
            self._it.close()
            self.done.set()

    def take(self, timeout: float) -> Delivery | None:
        self._want.release()
        try:
            return self._out.get(timeout=timeout)
        except _queue.Empty:
            return None

    def close(self) -> float:
        t0 = time.monotonic()
        self.stop_event.set()
        assert self.done.wait(10), "consume() did not return after stop"
        return time.monotonic() - t0


def raw_pull(sub: SubscriberClient, subscription: str, timeout: float = 1.5) -> list[Any]:
    try:
        return list(sub.pull(subscription=subscription, max_messages=100, timeout=timeout).received_messages)
    except gexc.DeadlineExceeded:
        return []


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def broker(url: str, queue: str) -> Iterator[GCPPubSubBroker]:
    b = make_broker(url, queue)
    yield b
    b.close()


# -- URL, options, names ---------------------------------------------------------------------------


def test_url_parsing_matches_go() -> None:
    assert parse_url("gcppubsub://my-project/my-sub") == ("my-project", "my-sub", {})
    assert parse_url("gcppubsub://p/my-sub?create_missing=true") == ("p", "my-sub", {"create_missing": "true"})
    for bad in (
        "gcppubsub://",
        "gcppubsub://p",
        "gcppubsub://p/",
        "gcppubsub:///sub",
        "gcppubsub://p/s/x",
        "redis://p/s",
    ):
        with pytest.raises(ConfigError, match=r"gcppubsub://YOUR_GCP_PROJECT_ID|not a gcppubsub"):
            parse_url(bad)
    with pytest.raises(ConfigError, match="not a valid Pub/Sub subscription id"):
        parse_url("gcppubsub://p/s1")


def test_scheme_resolves_through_entry_point() -> None:
    assert get_plugin_host().broker_class("gcppubsub://p/subscription") is GCPPubSubBroker


def test_options_from_section_and_query() -> None:
    cfg = Config(transport_options={"gcp_pubsub": {"ack_deadline": "30", "ordering": "yes", "max_messages": 5}})
    b = GCPPubSubBroker("gcppubsub://p/workers?ack_deadline=45", cfg)
    assert (b.options.ack_deadline, b.options.ordering, b.options.max_messages) == (45, True, 5)
    with pytest.raises(ConfigError, match=r"gcp_pubsub\.ack_deadlin.*unknown option"):
        GCPPubSubBroker("gcppubsub://p/workers", Config(transport_options={"gcp_pubsub": {"ack_deadlin": 3}}))
    with pytest.raises(ConfigError, match="ack_deadline"):
        GCPPubSubOptions(ack_deadline=5)
    with pytest.raises(ConfigError, match=r"needs gcp_pubsub\.dead_letter_topic"):
        GCPPubSubOptions(max_delivery_attempts=5)
    with pytest.raises(ConfigError, match="5-100"):
        GCPPubSubOptions(dead_letter_topic="dead-letters", max_delivery_attempts=3)


def test_subscription_names(queue: str) -> None:
    cfg = Config(default_queue=queue, transport_options={"gcp_pubsub": {"subscriptions": {"emails": "email-workers"}}})
    b = GCPPubSubBroker("gcppubsub://proj/workers", cfg)
    assert b.topic_path(queue) == f"projects/proj/topics/{queue}"
    assert b.subscription_path(queue) == "projects/proj/subscriptions/workers"  # Go: the URL's
    assert b.subscription_path("reports") == "projects/proj/subscriptions/workers-reports"
    assert b.subscription_path("emails") == "projects/proj/subscriptions/email-workers"
    with pytest.raises(ConfigError, match=r"queue 'q1'.*not a valid Pub/Sub topic id"):
        b.topic_path("q1")


def test_bad_queue_name_is_a_clear_publish_error(broker: GCPPubSubBroker) -> None:
    with pytest.raises(PublishError, match="not a valid Pub/Sub topic id"):
        publish(broker, sig("9lives"))


# -- wire compatibility ------------------------------------------------------------------------------


def test_message_is_signature_json_without_attributes(
    broker: GCPPubSubBroker, queue: str, raw_clients: tuple[Any, Any]
) -> None:
    s = sig()
    publish(broker, s)
    got = raw_pull(raw_clients[1], broker.subscription_path(queue))
    assert len(got) == 1
    assert got[0].message.data == encode_signature(s)
    assert dict(got[0].message.attributes) == {}  # Go publishes Data only
    assert json.loads(got[0].message.data)["UUID"] == s.uuid


def test_go_published_message_is_consumed(broker: GCPPubSubBroker, queue: str, raw_clients: tuple[Any, Any]) -> None:
    broker.ensure_queue()
    go_json = (
        b'{"UUID":"task_go-1","Name":"add","RoutingKey":"' + queue.encode() + b'","ETA":null,"GroupUUID":"",'
        b'"GroupTaskCount":0,"Args":[{"Name":"","Type":"int64","Value":1},{"Name":"","Type":"int64","Value":2}],'
        b'"Headers":{},"Priority":0,"Immutable":false,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,'
        b'"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
        b'"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}'
    )
    raw_clients[0].publish(topic=broker.topic_path(queue), messages=[{"data": go_json}])
    pump = Pump(broker, queue)
    try:
        d = pump.take(10)
        assert d is not None and d.queue == queue
        assert decode_signature(d.body).uuid == "task_go-1"
        assert d.attributes["message_id"]
        broker.ack(d)
    finally:
        pump.close()


# -- resources and errors ----------------------------------------------------------------------------


def test_missing_topic_and_subscription_are_named(url: str, queue: str) -> None:
    b = make_broker(url, queue, create_missing=False)
    try:
        with pytest.raises(PublishError, match=rf"topic projects/.*/topics/{queue}.*does not exist.*create_missing"):
            publish(b, sig())
        with pytest.raises(GCPPubSubError, match=r"subscription projects/.*/subscriptions/sub-.*does not exist") as ei:
            b.ensure_queue()
        assert ei.value.code == "NOT_FOUND" and "/subscriptions/" in ei.value.resource
    finally:
        b.close()


def test_deleted_topic_and_subscription_are_created_again(url: str, queue: str) -> None:
    """With create_missing, a topic and subscription deleted after first use (an emulator that
    restarted, an operator's mistake) are created again on the next publish and consume, rather
    than failing for ever on what the broker remembered (found by the fault suite's restart)."""
    b = make_broker(url, queue, create_missing=True)
    try:
        publish(b, sig())
        sub, topic = b.subscription_path(queue), b.topic_path(queue)
        SubscriberClient().delete_subscription(subscription=sub)
        PublisherClient().delete_topic(topic=topic)
        with pytest.raises(PublishError, match="does not exist"):
            publish(b, sig())  # the first publish after the deletion fails, naming the topic
        s = sig()
        publish(b, s)  # the next one creates topic and subscription again
        stop = threading.Event()
        got = []
        for d in b.consume(queue, prefetch=1, stop=stop):
            got.append(decode_signature(d.body).uuid)
            b.ack(d)
            stop.set()
        assert got == [s.uuid]
    finally:
        b.close()


def test_subscription_of_another_topic_is_refused(url: str, queue: str) -> None:
    first = make_broker(url, queue)
    first.ensure_queue()
    other = make_broker(url, f"{queue}-other")  # same URL subscription, different default queue
    try:
        with pytest.raises(GCPPubSubError, match=f"reads topic .*/topics/{queue}, not .*{queue}-other"):
            other.ensure_queue()
    finally:
        first.close()
        other.close()


def test_api_errors_become_machinery_errors(broker: GCPPubSubBroker, queue: str) -> None:
    broker.ensure_queue()
    topic = broker.topic_path(queue)
    with pytest.raises(GCPPubSubError, match="already exists") as ei:
        broker._call("create topic", topic, broker._pub().create_topic, name=topic)
    assert ei.value.code == "ALREADY_EXISTS" and ei.value.resource == topic
    # The emulator has no IAM: check the translation of PermissionDenied on its own.
    err = translate(gexc.PermissionDenied("caller lacks pubsub.topics.publish"), "publish to topic", topic)
    assert isinstance(err, GCPPubSubError) and err.code == "PERMISSION_DENIED"
    assert topic in str(err) and "permission denied" in str(err)
    assert isinstance(translate(gexc.DeadlineExceeded("slow"), "pull from", "s"), BrokerConnectionError)
    assert isinstance(translate(gexc.ServiceUnavailable("down"), "pull from", "s"), BrokerConnectionError)


def test_unreachable_server_on_publish(url: str, queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pub/Sub unreachable: retried until ``timeout``, then a PublishError naming the topic."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
    b = make_broker(url, queue, create_missing=False, timeout=1.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(PublishError, match=rf"topic projects/.*/topics/{queue}") as ei:
            publish(b, sig())
        assert time.monotonic() - t0 < 10
        assert isinstance(ei.value.__cause__, BrokerConnectionError)
    finally:
        b.close()


def test_missing_credentials_are_reported(url: str, queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/credentials.json")
    b = make_broker(url, queue)
    try:
        with pytest.raises(PublishError, match=r"credentials|GOOGLE_APPLICATION_CREDENTIALS"):
            publish(b, sig())
    finally:
        b.close()


# -- consuming ---------------------------------------------------------------------------------------


def test_prefetch_limits_leased_messages(broker: GCPPubSubBroker, queue: str, raw_clients: tuple[Any, Any]) -> None:
    for _ in range(5):
        publish(broker, sig())
    pump = Pump(broker, queue, prefetch=2)
    try:
        first, second = pump.take(10), pump.take(10)
        assert first is not None and second is not None
        # This consumer holds 2 (its prefetch): the other 3 are still available to others.
        others = raw_pull(raw_clients[1], broker.subscription_path(queue))
        assert len(others) == 3
        raw_clients[1].modify_ack_deadline(
            subscription=broker.subscription_path(queue), ack_ids=[m.ack_id for m in others], ack_deadline_seconds=0
        )
        broker.ack(first)
        third = pump.take(10)
        assert third is not None
        for d in (second, third):
            broker.ack(d)
    finally:
        pump.close()


def test_stop_is_noticed_quickly(broker: GCPPubSubBroker, queue: str) -> None:
    pump = Pump(broker, queue)
    assert pump.take(1.5) is None  # idle: blocked in pull
    assert pump.close() < 2.5


def test_unhanded_messages_are_given_back_on_stop(url: str, queue: str) -> None:
    a = make_broker(url, queue, max_messages=0)
    for _ in range(3):
        publish(a, sig())
    pump = Pump(a, queue, prefetch=3)
    d = pump.take(10)
    assert d is not None
    a.ack(d)
    pump.close()  # up to 2 pulled but never handed out: given back at once, not after 10 s
    b = make_broker(url, queue)
    pump2 = Pump(b, queue, prefetch=3)
    try:
        got = [pump2.take(3), pump2.take(3)]
        assert all(got), "messages the stopped consumer held were not given back promptly"
        for g in got:
            b.ack(g)  # type: ignore[arg-type]
    finally:
        pump2.close()
        a.close()
        b.close()


@pytest.mark.slow
def test_lease_is_extended_past_the_ack_deadline(url: str, queue: str) -> None:
    """A task running longer than the subscription's 10 s deadline keeps its message."""
    a, b = make_broker(url, queue), make_broker(url, queue)
    publish(a, sig())
    pa = Pump(a, queue)
    pb: Pump | None = None
    try:
        d = pa.take(10)
        assert d is not None
        pb = Pump(b, queue)
        assert pb.take(13) is None, "message redelivered while its task was still running"
        a.ack(d)
        assert pb.take(2) is None
    finally:
        pa.close()
        if pb is not None:
            pb.close()
        a.close()
        b.close()


def test_close_gives_held_messages_back(url: str, queue: str) -> None:
    a = make_broker(url, queue)
    publish(a, sig())
    pa = Pump(a, queue)
    d = pa.take(10)
    assert d is not None
    pa.close()
    a.close()  # the delivery was never acked: it goes back at once
    b = make_broker(url, queue)
    pb = Pump(b, queue)
    try:
        again = pb.take(4)
        assert again is not None and again.body == d.body
        b.ack(again)
    finally:
        pb.close()
        b.close()


# -- ETA ---------------------------------------------------------------------------------------------


def test_eta_redelay_uses_the_ack_deadline(broker: GCPPubSubBroker, queue: str) -> None:
    """An early message is given back with its ack deadline set to the remaining time: the
    consumer holds nothing meanwhile, hands nothing out early, and it comes back once, when due."""
    eta = datetime.now(timezone.utc) + timedelta(seconds=3)
    s = sig(eta=eta)
    publish(broker, s)
    pump = Pump(broker, queue)
    try:
        assert pump.take(1.5) is None  # pulled, found early, given back until due
        assert broker._held_deliveries() == []  # nothing held while it waits
        again = pump.take(10)
        assert again is not None
        assert time.time() >= eta.timestamp() - 0.05
        assert decode_signature(again.body).uuid == s.uuid
        broker.ack(again)
        assert pump.take(2) is None  # exactly once
    finally:
        pump.close()


def test_eta_task_runs_when_due(machinery_worker: Any, machinery_server: Any) -> None:
    """End to end with a real worker process: the ETA is honoured through ack-deadline re-delays."""
    machinery_worker(concurrency=2)
    eta = datetime.now(timezone.utc) + timedelta(seconds=2.5)
    ran_at = machinery_server.send_task(Signature("now", eta=eta)).get(timeout=20)
    assert ran_at >= eta.timestamp() - 0.01


def test_long_delay_is_capped_at_600s(broker: GCPPubSubBroker, queue: str, raw_clients: tuple[Any, Any]) -> None:
    publish(broker, sig())
    pump = Pump(broker, queue)
    try:
        d = pump.take(10)
        assert d is not None
        broker.nack(d, requeue=True, delay=3600)  # accepted (600 s hop), not an InvalidArgument
        assert raw_pull(raw_clients[1], broker.subscription_path(queue), timeout=1.5) == []
    finally:
        pump.close()
        broker.purge()


# -- ordering, dead letters, purge, clients --------------------------------------------------------


def test_ordering_key_serialises_a_key(url: str, queue: str) -> None:
    b = make_broker(url, queue, ordering=True)
    try:
        sigs = [sig() for _ in range(4)]
        sigs.append(sig(broker_message_group_id="other-key"))
        for s in sigs:
            publish(b, s)
        pump = Pump(b, queue, prefetch=5)
        try:
            first = pump.take(10)
            assert first is not None and first.attributes["ordering_key"] == queue  # default key: the queue
            other = pump.take(5)  # the only message that may run while the first is in flight
            assert other is not None and other.attributes["ordering_key"] == "other-key"
            assert pump.take(1.5) is None, "a second message of the same key ran concurrently"
            order = [decode_signature(first.body).uuid]
            b.ack(first)
            b.ack(other)
            for _ in range(3):
                d = pump.take(10)
                assert d is not None
                order.append(decode_signature(d.body).uuid)
                b.ack(d)
            assert order == [s.uuid for s in sigs[:4]]
        finally:
            pump.close()
    finally:
        b.close()


def test_nack_without_requeue_goes_to_dead_letter_topic(
    url: str, queue: str, raw_clients: tuple[Any, Any], pubsub_project: str
) -> None:
    dead = f"dead-{uuid.uuid4().hex[:8]}"
    b = make_broker(url, queue, dead_letter_topic=dead, max_delivery_attempts=5)
    try:
        s = sig()
        publish(b, s)
        assert (
            b._sub().get_subscription(subscription=b.subscription_path(queue)).dead_letter_policy.max_delivery_attempts
            == 5
        )
        pump = Pump(b, queue)
        try:
            d = pump.take(10)
            assert d is not None
            b.nack(d, requeue=False)
            assert pump.take(2) is None  # acknowledged on the source subscription
        finally:
            pump.close()
        letters = raw_pull(raw_clients[1], f"projects/{pubsub_project}/subscriptions/{dead}", timeout=3)
        assert [m.message.data for m in letters] == [encode_signature(s)]
        assert letters[0].message.attributes["MachinerySourceSubscription"] == b.subscription_path(queue)
    finally:
        b.close()


def test_nack_without_requeue_and_no_dead_letter_topic_drops(broker: GCPPubSubBroker, queue: str) -> None:
    publish(broker, sig())
    pump = Pump(broker, queue)
    try:
        d = pump.take(10)
        assert d is not None
        broker.nack(d, requeue=False)
        assert pump.take(2) is None
    finally:
        pump.close()


def test_purge_drops_ready_and_delayed(broker: GCPPubSubBroker, queue: str, raw_clients: tuple[Any, Any]) -> None:
    eta = datetime.now(timezone.utc) + timedelta(seconds=3)
    for _ in range(3):
        publish(broker, sig())
    publish(broker, sig(eta=eta))
    pump = Pump(broker, queue, prefetch=4)
    try:
        taken = [pump.take(10) for _ in range(3)]
        assert all(d is not None and decode_signature(d.body).eta is None for d in taken)
        # The consumer pulled the ETA message too and gave it back until due (leased, out of
        # sight): it is not handed out early.
        assert pump.take(1.0) is None
    finally:
        pump.close()
    # Given back once the consumer has stopped: a consumer still running would take them again
    # (and hold them, leased, where purge cannot count them).
    for d in taken:
        broker.nack(d, requeue=True)  # type: ignore[arg-type]
    assert broker.purge() == 3
    time.sleep(max(0.0, eta.timestamp() - time.time()) + 0.5)  # the delayed one would be back by now
    assert raw_pull(raw_clients[1], broker.subscription_path(queue)) == []


def test_purge_of_unknown_queue_is_zero(broker: GCPPubSubBroker) -> None:
    assert broker.purge(f"never-{uuid.uuid4().hex[:8]}") == 0


def test_user_supplied_clients_are_used_and_left_open(url: str, queue: str) -> None:
    from google.cloud import pubsub_v1

    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()  # the high-level clients
    b = make_broker(url, queue, publisher=pub, subscriber=sub)
    try:
        publish(b, sig())
        assert b._pub() is pub and b._sub() is sub
        pump = Pump(b, queue)
        d = pump.take(10)
        assert d is not None
        b.ack(d)
        pump.close()
        b.close()
        pub.get_topic(topic=b.topic_path(queue))  # still usable: not closed by the broker
        sub.get_subscription(subscription=b.subscription_path(queue))
    finally:
        sub.close()
        pub.transport.close()


def test_closed_broker_refuses_work(url: str, queue: str) -> None:
    b = make_broker(url, queue)
    publish(b, sig())
    b.close()
    b.close()  # idempotent
    with pytest.raises(BrokerError, match="closed"):
        publish(b, sig())


def test_publish_many_batches_per_topic(broker: GCPPubSubBroker, queue: str, raw_clients: tuple[Any, Any]) -> None:
    other = f"{queue}-b"
    items = [sig() for _ in range(5)] + [sig(other) for _ in range(3)]
    for s in items:
        broker.adjust_routing_key(s)
    broker.publish_many([(encode_signature(s), s) for s in items])
    got_a = raw_pull(raw_clients[1], broker.subscription_path(queue))
    got_b = raw_pull(raw_clients[1], broker.subscription_path(other))
    assert sorted(m.message.data for m in got_a) == sorted(encode_signature(s) for s in items[:5])
    assert sorted(m.message.data for m in got_b) == sorted(encode_signature(s) for s in items[5:])


def test_publisher_client_type_is_gapic() -> None:
    # The broker calls the GAPIC Publish (one synchronous request), also on high-level clients.
    from google.cloud import pubsub_v1

    assert issubclass(pubsub_v1.PublisherClient, PublisherClient)


def test_brokers_on_one_url_share_one_transport(url: str, queue: str) -> None:
    """Brokers on one URL and configuration share the transport (the URL and options parsed
    once, one publisher and one subscriber client); the clients close with the last of them."""
    from machinery_gcp.transport import GCPPubSubTransport

    a, b, other = make_broker(url, queue), make_broker(url, queue), make_broker(url, queue, ack_deadline=11)
    transport = a.transport
    assert isinstance(transport, GCPPubSubTransport) and b.transport is transport and other.transport is not transport
    assert a.options is b.options is transport.options
    try:
        publish(a, sig())
        assert a._pub() is b._pub() and a._sub() is b._sub()
        a.close()
        assert transport.holders == 1 and transport.is_open
        publish(b, sig())  # a's close left b's clients open
    finally:
        a.close()
        b.close()
        other.close()
    assert transport.holders == 0 and not transport.is_open
