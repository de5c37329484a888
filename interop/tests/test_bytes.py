"""Byte comparison: the same sends made by the Go producer and by the Python producer, and the
same tasks run by a Go worker and by a Python worker, captured where they are stored (Redis
lists, the delayed-tasks sorted set and keys; AMQP queues nobody consumes, with the message
properties) and compared field by field, then as bytes, after replacing UUIDs by their role
in the scenario and times by a placeholder."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest
import redis
from conftest import AMQP_URL, Env, Fleet, go_produce, py_produce

SENT = ["single", "group", "chain", "chain_immutable", "chord", "eta", "retry", "on_error", "types", "failure"]
RUN = ["single", "failure", "followups"]  # result types: test_matrix (Python infers them)
_UUID = re.compile(r"(task_|group_|chord_)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r'"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d))"')
Captured = dict[str, Any]


def roles(lines: list[dict[str, Any]]) -> dict[str, str]:
    """UUID -> ``<scenario>#<index>`` from the producer's lines."""
    return {u: f"{line['scenario']}#{i}" for line in lines for i, u in enumerate(line["uuids"])}


def normalise(text: str, uuid_roles: dict[str, str], name: str) -> str:
    """The test's queue name becomes <name>, UUIDs their role (or UUID? when unknown), times
    other than Go's zero time <time>."""
    text = text.replace(name, "<name>")
    text = _UUID.sub(lambda m: uuid_roles.get(m.group(0), "UUID?"), text)
    return _TIME.sub(lambda m: m.group(0) if m.group(1).startswith("0001-01-01") else '"<time>"', text)


def _amqp_drain(ch: Any, queue: str) -> list[dict[str, Any]] | None:
    try:
        ch.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    out = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(
            {
                "body": body.decode(),
                "exchange": method.exchange,
                "routing_key": method.routing_key,
                "content_type": props.content_type,
                "delivery_mode": props.delivery_mode,
                "priority": props.priority,
                "headers": props.headers,
                "expiration": props.expiration,
            }
        )


def capture(env: Env, side: redis.Redis, lines: list[dict[str, Any]], queues: list[str]) -> Captured:
    """Messages in ``queues`` (and Redis' delayed set) and what the backend holds for every
    UUID of ``lines``, normalised, keyed by role."""
    uuid_roles = roles(lines)
    out: Captured = {}
    if env.broker == "redis":
        for q in queues:
            raw = side.lrange(q, 0, -1)
            out[f"list {q.replace(env.name, '<name>')}"] = [normalise(m.decode(), uuid_roles, env.name) for m in raw]
        delayed = side.zrange(env.name + "_delayed", 0, -1)
        out["delayed"] = [normalise(m.decode(), uuid_roles, env.name) for m in delayed]
    if env.backend == "redis":
        for u, role in uuid_roles.items():
            state = side.get(u)
            out[f"key {role}"] = None if state is None else normalise(state.decode(), uuid_roles, env.name)
    if "amqp" in (env.broker, env.backend):
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            names = (queues if env.broker == "amqp" else []) + (list(uuid_roles) if env.backend == "amqp" else [])
            for q in names:
                ch = conn.channel()
                msgs = _amqp_drain(ch, q)
                if ch.is_open:
                    ch.close()
                if msgs is not None:
                    for m in msgs:
                        if env.backend == "amqp":
                            m["body"] = _completion_order(m["body"])
                        m["headers"] = _headers(m["headers"], uuid_roles, env.name)
                        m["body"] = normalise(m["body"], uuid_roles, env.name)
                        m["routing_key"] = normalise(m["routing_key"], uuid_roles, env.name)
                        m["exchange"] = normalise(m["exchange"], uuid_roles, env.name)
                    out[f"queue {uuid_roles.get(q, q.replace(env.name, '<name>'))}"] = msgs
        finally:
            conn.close()
    return out


def _completion_order(body: str) -> str:
    """On Go's AMQP backend a chord callback gets its group's results in completion order (the
    group queue's order), which differs between runs in Go and in Python alike: sort the
    appended results of the chord callback (``multiply`` in the followups scenario)."""
    try:
        msg = json.loads(body)
    except ValueError:
        return body
    if not isinstance(msg, dict) or msg.get("Name") != "multiply" or not msg.get("Args"):
        return body
    msg["Args"] = sorted(msg["Args"], key=lambda a: json.dumps(a, sort_keys=True))
    return json.dumps(msg, separators=(",", ":"))


def _headers(headers: Any, uuid_roles: dict[str, str], name: str) -> Any:
    """AMQP headers as JSON text, normalised; a delay queue's name carries the delay in ms
    (``delay.<ms>.<exchange>.<routing key>``), which differs by a millisecond between runs."""
    if headers is None:
        return None
    text = json.dumps(headers, default=lambda v: "<time>" if hasattr(v, "isoformat") else str(v))
    return re.sub(r"delay\.\d+\.", "delay.<ms>.", normalise(text, uuid_roles, name))


def _sort_messages(captured: Captured) -> Captured:
    """Group members are sent concurrently: order the messages of each task queue (not the
    state sequences of the AMQP result queues) by their content."""
    return {
        k: sorted(v, key=lambda m: json.dumps(m, sort_keys=True)) if k.startswith(_TASK_QUEUES) else v
        for k, v in captured.items()
    }


_TASK_QUEUES = ("list ", "delayed", "queue <name>")


def _fields(value: Any, path: str = "") -> dict[str, Any]:
    """Flattens JSON text (bodies, states) and containers into ``path -> scalar``."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            value = json.loads(value)
        except ValueError:
            return {path: value}
    if isinstance(value, dict):
        out: dict[str, Any] = {f"{path}.keys": list(value)}  # Go's field order is part of the bytes
        for k, v in value.items():
            out.update(_fields(v, f"{path}.{k}"))
        return out
    if isinstance(value, list):
        out = {f"{path}.len": len(value)}
        for i, v in enumerate(value):
            out.update(_fields(v, f"{path}[{i}]"))
        return out
    return {path: value}


def assert_same(go: Captured, py: Captured) -> None:
    """Field by field first (a readable list of differences), then the normalised bytes."""
    go, py = _sort_messages(go), _sort_messages(py)
    gf, pf = _fields(go), _fields(py)
    diffs = [f"{k}: go={gf.get(k, '<absent>')!r} python={pf.get(k, '<absent>')!r}"
             for k in sorted(set(gf) | set(pf)) if gf.get(k, "<absent>") != pf.get(k, "<absent>")]
    assert not diffs, f"{len(diffs)} differences (Go vs Python):\n" + "\n".join(diffs[:400])
    assert json.dumps(go, sort_keys=True) == json.dumps(py, sort_keys=True)


@pytest.mark.parametrize("combo", ["redis-redis", "amqp-amqp"])
def test_producer_bytes(
    fleet_factory: Callable[..., tuple[Env, Fleet]], side: redis.Redis, go_bin: Path, combo: str
) -> None:
    """Messages and PENDING states the Go producer and the Python producer write for the same
    sends, with no worker running."""
    captured = {}
    for producer in ("go", "py"):
        env, _ = fleet_factory(combo, "bytes" + producer)
        if producer == "go":
            lines = go_produce(go_bin, env, SENT, args=["-send-only"])
        else:
            lines = py_produce(env, SENT, send_only=True)
        # AMQP: the ETA message (2 s) dead-letters from its delay queue into the task queue,
        # with x-death headers naming the exchange and routing key it was published with
        time.sleep(3.0 if env.broker == "amqp" else 0.5)
        captured[producer] = capture(env, side, lines, [env.name])
    assert any(captured["go"].values()), "nothing captured from the Go producer"
    assert_same(captured["go"], captured["py"])


@pytest.mark.parametrize("combo", ["redis-redis", "amqp-amqp"])
def test_worker_bytes(
    fleet_factory: Callable[..., tuple[Env, Fleet]], side: redis.Redis, go_bin: Path, combo: str
) -> None:
    """States, results and follow-up messages (chain step, OnError callback, chord callback,
    routed to a queue nobody consumes) written by a Go worker and by a Python worker for the
    same Go producer's sends."""
    captured = {}
    for worker in ("go", "py"):
        env, fleet = fleet_factory(combo, "wbytes" + worker)
        capture_q = env.name + "_capture"
        (fleet.go_worker if worker == "go" else fleet.py_worker)()
        fleet.wait_ready()
        lines = go_produce(go_bin, env, RUN, args=["-send-only", "-capture", capture_q])
        _wait_for_followups(env, side, capture_q, 3, timeout=15.0)
        time.sleep(1.0)
        fleet.stop()
        captured[worker] = capture(env, side, lines, [capture_q])
    assert_same(captured["go"], captured["py"])


def _wait_for_followups(env: Env, side: redis.Redis, queue: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if env.broker == "redis":
            count = side.llen(queue)
        else:
            conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            try:
                try:
                    count = conn.channel().queue_declare(queue, passive=True).method.message_count
                except pika.exceptions.ChannelClosedByBroker:
                    count = 0
            finally:
                conn.close()
        if count >= n:
            return
        time.sleep(0.1)
