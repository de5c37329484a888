"""Fixtures for the Pub/Sub broker tests: Google's Pub/Sub emulator, a project per test session.

``PUBSUB_EMULATOR_HOST`` (default ``127.0.0.1:8085``) is set before any client is built, so the
client library talks to the emulator; nothing here can reach Google's real service. Each test
session uses its own project id (the emulator accepts any), and deletes its topics and
subscriptions at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from machinery.testing import require_server

os.environ.setdefault("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")

pytest_plugins = ["machinery.testing.plugin"]

EMULATOR = os.environ["PUBSUB_EMULATOR_HOST"]
PROJECT = f"mt-{uuid.uuid4().hex[:10]}"


def emulator_host_port() -> tuple[str, int]:
    host, _, port = EMULATOR.rpartition(":")
    return host or "127.0.0.1", int(port)


@pytest.fixture(scope="session")
def pubsub_project() -> str:
    """This session's project id."""
    return PROJECT


@pytest.fixture
def subscription_name() -> str:
    """A subscription id no other test uses."""
    return f"sub-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(subscription_name: str) -> str:
    """``gcppubsub://<session project>/<unique subscription>`` on the emulator."""
    url = f"gcppubsub://{PROJECT}/{subscription_name}"
    host, port = emulator_host_port()
    require_server(f"{url} (PUBSUB_EMULATOR_HOST={EMULATOR})", host, port)
    return url


@pytest.fixture
def transport_options() -> Mapping[str, Mapping[str, Any]]:
    """Create topics and subscriptions on first use; the emulator's minimum ack deadline (10 s),
    so a killed worker's message comes back quickly."""
    return {"gcp_pubsub": {"create_missing": True, "ack_deadline": 10}}


@pytest.fixture(scope="session")
def raw_clients() -> Iterator[tuple[Any, Any]]:
    """Raw GAPIC publisher and subscriber clients (bypassing the plugin); on teardown every
    topic and subscription of the session's project is deleted."""
    from google.pubsub_v1 import PublisherClient, SubscriberClient

    pub, sub = PublisherClient(), SubscriberClient()
    yield pub, sub
    try:
        for s in sub.list_subscriptions(project=f"projects/{PROJECT}"):
            sub.delete_subscription(subscription=s.name)
        for t in pub.list_topics(project=f"projects/{PROJECT}"):
            pub.delete_topic(topic=t.name)
    except Exception:
        pass
    finally:
        sub.transport.close()
        pub.transport.close()
