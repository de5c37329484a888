"""The machinery conformance suite against Google's Pub/Sub emulator.

The broker oracle counts a queue's messages with the raw client, bypassing the plugin. Pub/Sub
has no count API (the real service reports backlog through Cloud Monitoring), and messages
leased by a consumer are invisible to ``Pull``, so the oracle snapshots the queue's
subscription (a snapshot holds every unacknowledged message, leased or not), seeks a scratch
subscription of the same topic to that snapshot and pulls it dry. Snapshots need the topic to
retain messages, hence ``topic_retention`` in the test options.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pytest
from google.api_core import exceptions as gexc

from machinery.testing import BrokerConformance, BrokerOracle, WorkflowConformance


class PubSubOracle(BrokerOracle):
    """Unacknowledged messages of a queue's subscription, counted through a snapshot.

    The subscription of a queue follows the documented rule: the URL's subscription for the
    default queue, ``<subscription>-<queue>`` for any other.
    """

    def __init__(self, raw_clients: tuple[Any, Any], url: str, default_queue: str) -> None:
        self.pub, self.sub = raw_clients
        self.project, _, self.subscription = url.removeprefix("gcppubsub://").partition("/")
        self.default_queue = default_queue

    def message_count(self, queue: str) -> int:
        name = self.subscription if queue == self.default_queue else f"{self.subscription}-{queue}"
        source = f"projects/{self.project}/subscriptions/{name}"
        try:
            topic = self.sub.get_subscription(subscription=source).topic
        except gexc.NotFound:
            return 0
        token = uuid.uuid4().hex[:12]
        snapshot = f"projects/{self.project}/snapshots/count-{token}"
        scratch = f"projects/{self.project}/subscriptions/count-{token}"
        self.sub.create_snapshot(name=snapshot, subscription=source)
        try:
            self.sub.create_subscription(name=scratch, topic=topic, ack_deadline_seconds=600)
            try:
                self.sub.seek(request={"subscription": scratch, "snapshot": snapshot})
                seen: set[str] = set()
                while True:
                    try:
                        resp = self.sub.pull(subscription=scratch, max_messages=1000, timeout=0.4)
                    except gexc.DeadlineExceeded:
                        break
                    if not resp.received_messages:
                        break
                    seen.update(m.message.message_id for m in resp.received_messages)
                return len(seen)
            finally:
                self.sub.delete_subscription(subscription=scratch)
        finally:
            self.sub.delete_snapshot(snapshot=snapshot)


@pytest.fixture
def transport_options() -> Mapping[str, Mapping[str, Any]]:
    """Create what is missing; the emulator's minimum ack deadline (10 s), so a killed worker's
    message comes back quickly; topics that retain messages, for the oracle's snapshots."""
    return {"gcp_pubsub": {"create_missing": True, "ack_deadline": 10, "topic_retention": 600}}


class TestGCPPubSubBroker(BrokerConformance):
    #: ``ack_deadline: 10`` above: a dead consumer's lease runs out within 10 s (+ emulator slack).
    redelivery_timeout: ClassVar[float | None] = 15.0
    #: Each count takes a snapshot and a pull round (~0.5 s).
    oracle_timeout: ClassVar[float] = 6.0

    @pytest.fixture
    def broker_oracle(self, raw_clients: tuple[Any, Any], url: str, machinery_queue: str) -> Iterator[PubSubOracle]:
        yield PubSubOracle(raw_clients, url, machinery_queue)


class TestGCPPubSubWorkflow(WorkflowConformance):
    pass
