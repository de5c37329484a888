"""Shared fixtures: the RabbitMQ URL under test, raw-pika helpers and per-test queue clean-up."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import pika
import pika.exceptions as pex
import pytest

from machinery.testing import BackendOracle, BrokerOracle, require_server

pytest_plugins = ["machinery.testing.plugin"]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def amqp_url() -> str:
    """``AMQP_URL`` (set by ``scripts/start-services``' env.sh), else the local default."""
    return os.environ.get("AMQP_URL", DEFAULT_URL)


@pytest.fixture
def url() -> str:
    """The RabbitMQ under test; fails under CI and skips locally when nothing listens."""
    u = amqp_url()
    require_server(u, port=pika.URLParameters(u).port)
    return u


@pytest.fixture
def transport_options(machinery_queue: str) -> Mapping[str, Mapping[str, Any]]:
    """Bind each test's queue with its own key: the Go default key ``machinery_task`` is shared by
    every queue bound with it on this RabbitMQ, so tests would receive each other's messages."""
    return {"amqp": {"binding_key": machinery_queue}}


@contextlib.contextmanager
def raw_channel(url: str | None = None) -> Iterator[Any]:
    """A raw pika channel (the oracle's view, bypassing the plugin)."""
    conn = pika.BlockingConnection(pika.URLParameters(url or amqp_url()))
    try:
        yield conn.channel()
    finally:
        if conn.is_open:
            conn.close()


def delete_queues(*names: str) -> None:
    """Delete queues with raw pika (missing ones are fine)."""
    with raw_channel() as ch:
        for n in names:
            ch.queue_delete(n)


@pytest.fixture(autouse=True)
def _delete_test_queues(machinery_queue: str) -> Iterator[None]:
    """The suite only purges; durable queues on a shared RabbitMQ must be deleted."""
    yield
    with contextlib.suppress(Exception):
        delete_queues(machinery_queue, f"{machinery_queue}_custom")


MGMT_URL = os.environ.get("RABBITMQ_MGMT_URL", "http://127.0.0.1:15672")
RABBITMQ_NODE = os.environ.get("RABBITMQ_NODENAME", "rabbit@localhost")


def _mgmt_depth(queue: str) -> int | None:
    """``messages`` (ready + unacknowledged) from the management API; None when it is not enabled."""
    vhost = urllib.parse.quote(pika.URLParameters(amqp_url()).virtual_host, safe="")
    req = urllib.request.Request(f"{MGMT_URL}/api/queues/{vhost}/{urllib.parse.quote(queue, safe='')}")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            info = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return 0
        return None
    except OSError:
        return None
    # The management API refreshes its counters every few seconds; ready + unacked are live.
    return int(info.get("messages_ready", 0)) + int(info.get("messages_unacknowledged", 0))


def _ctl_depth(queue: str) -> int:
    """``messages`` (ready + unacknowledged) from ``rabbitmqctl list_queues`` (about 1 s)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "-n", RABBITMQ_NODE, "list_queues", "name", "messages", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for line in out.splitlines():
        name, _, count = line.rpartition("\t")
        if name == queue:
            return int(count)
    return 0


def queue_depth(queue: str) -> int:
    """Ready plus delivered-but-unacknowledged messages of ``queue`` (0 when it does not exist).

    AMQP itself only reports ready messages, so this asks the management API and, when the
    plugin is not enabled on the RabbitMQ under test, ``rabbitmqctl``.
    """
    depth = _mgmt_depth(queue)
    return _ctl_depth(queue) if depth is None else depth


def ready_count(queue: str) -> int:
    """Ready messages of ``queue`` (AMQP's passive ``queue.declare``), 0 when it does not exist."""
    try:
        with raw_channel() as ch:
            return int(ch.queue_declare(queue, passive=True).method.message_count)
    except pex.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise


class RawBrokerOracle(BrokerOracle):
    """Ready + unacknowledged messages of a queue, bypassing the plugin."""

    def message_count(self, queue: str) -> int:
        return queue_depth(queue)


class RawBackendOracle(BackendOracle):
    """The newest state message of a task's queue, read with raw pika and given back."""

    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        try:
            with raw_channel() as ch:
                body = None
                while True:
                    method, _props, payload = ch.basic_get(task_uuid, auto_ack=False)
                    if method is None:
                        break
                    body = payload
                    if method.message_count == 0:
                        break
                # Closing the channel without acknowledging gives every message back.
        except pex.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise
        return None if body is None else json.loads(body)
