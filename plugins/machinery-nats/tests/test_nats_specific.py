"""What the conformance suite does not cover: dead letters, the in-progress heartbeat, option
and name checks, a server restart, and the plugin's import discipline."""

from __future__ import annotations

import ast
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PREFIX, STREAM, PrivateNats

from machinery import Config, Signature
from machinery.plugin import ConfigError, Delivery, encode_signature, new_uuid
from machinery_nats import NatsBroker

PLUGIN = Path(__file__).parent.parent


def make(url: str, queue: str, **options: Any) -> NatsBroker:
    opts = {"stream": STREAM, "subject_prefix": PREFIX, **options}
    return NatsBroker(url, Config(broker=url, default_queue=queue, transport_options={"nats": opts}))


def send(b: NatsBroker, n: int = 1) -> list[str]:
    uuids = []
    for _ in range(n):
        sig = Signature("add", uuid=new_uuid())
        b.adjust_routing_key(sig)
        b.publish(encode_signature(sig), sig)
        uuids.append(sig.uuid)
    return uuids


class Taker:
    """A consumer thread handing deliveries out one at a time (prefetch 1)."""

    def __init__(self, b: NatsBroker, q: str) -> None:
        self.stop = threading.Event()
        self.out: queue.Queue[Delivery] = queue.Queue()
        self.t = threading.Thread(target=self._run, args=(b, q), daemon=True)
        self.t.start()

    def _run(self, b: NatsBroker, q: str) -> None:
        for d in b.consume(q, prefetch=1, stop=self.stop):
            self.out.put(d)

    def take(self, timeout: float = 5.0) -> Delivery | None:
        try:
            return self.out.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.stop.set()
        self.t.join(5)


def test_plugin_imports_only_the_author_namespace() -> None:
    """machinery-nats is written against ``machinery.plugin`` (and its tests ``machinery.testing``)
    only, plus the public ``machinery`` package in tests: the worked example needs nothing else."""
    bad = []
    for path in [*PLUGIN.glob("src/**/*.py"), *PLUGIN.glob("tests/*.py")]:
        allowed = {"machinery.plugin"}
        if "tests" in path.parts:
            allowed |= {"machinery.testing", "machinery"}
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                ok = name in allowed or ("tests" in path.parts and name.startswith("machinery.testing."))
                if name.split(".")[0] == "machinery" and not ok:
                    bad.append(f"{path.relative_to(PLUGIN)}:{node.lineno} imports {name}")
    assert not bad, bad


def test_dead_letters_on_reject_and_past_max_deliveries(url: str, machinery_queue: str) -> None:
    b = make(url, machinery_queue, max_deliveries=2)
    try:
        first, second = send(b, 2)
        c = Taker(b, machinery_queue)
        d = c.take()
        assert d is not None
        b.nack(d, requeue=False)
        for _ in range(2):  # the other one: delivered and given back twice...
            d = c.take()
            assert d is not None
            b.nack(d)
        assert c.take(1.5) is None  # ...its third delivery goes to the dead letters
        c.close()
        dead = b.dead_letters()
        assert len(dead) == 2
        assert {u for u in (first, second) if any(u.encode() in x for x in dead)} == {first, second}
        assert b.pending_tasks() == []
        # the dead-letter capability behind `machinery dead` (list, show, replay, purge)
        letters = b.list_dead_letters(machinery_queue)
        assert sorted(d.body for d in letters) == sorted(dead) and {d.queue for d in letters} == {machinery_queue}
        assert {d.id for d in b.list_dead_letters() if d.queue == machinery_queue} == {d.id for d in letters}
        assert b.get_dead_letter(letters[0].id, machinery_queue) == letters[0]
        assert b.remove_dead_letter(letters[0]) is True
        assert b.remove_dead_letter(letters[0]) is False
        assert [d.id for d in b.list_dead_letters(machinery_queue)] == [letters[1].id]
    finally:
        b.close()


def test_heartbeat_keeps_a_long_task_from_redelivery(url: str, machinery_queue: str) -> None:
    """A message held three times ``ack_wait`` is not handed to a second consumer."""
    b, other = make(url, machinery_queue, ack_wait=1.0), make(url, machinery_queue, ack_wait=1.0)
    try:
        send(b)
        c1 = Taker(b, machinery_queue)
        d = c1.take()
        assert d is not None
        c2 = Taker(other, machinery_queue)
        assert c2.take(3.0) is None, "a message still being worked on was delivered again"
        b.ack(d)
        c1.close()
        c2.close()
    finally:
        b.close()
        other.close()


def test_bad_names_and_options(url: str) -> None:
    with pytest.raises(ConfigError, match="ack_wait"):
        make(url, "q", ack_wait=0)
    with pytest.raises(ConfigError, match="stream"):
        make(url, "q", stream="a.b")
    b = make(url, "q")
    with pytest.raises(ConfigError, match="subject"):
        b.subject("a b")
    assert b.durable("a.b") != b.durable("a_b")
    assert "secret" not in repr(make("nats://u:secret@127.0.0.1:4222", "q"))
    b.close()


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A nats-server -js of our own, with ``restart()`` (SIGKILL, then start again)."""
    srv = PrivateNats(tmp_path)
    srv.start()

    def restart() -> None:
        srv.stop()
        time.sleep(1.0)
        srv.start()

    yield srv.url, restart
    srv.stop()


def test_consumer_survives_a_server_restart(private_nats: tuple[str, Any], machinery_queue: str) -> None:
    """Messages stored before a restart of the server, and published after it, reach a consumer
    started before it; nothing is lost."""
    url, restart = private_nats
    b = make(url, machinery_queue)
    got: list[bytes] = []
    stop = threading.Event()

    def consume() -> None:
        for d in b.consume(machinery_queue, prefetch=2, stop=stop):
            got.append(d.body)
            b.ack(d)

    try:
        before = send(b, 2)
        t = threading.Thread(target=consume, daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        restart()
        after: list[str] = []
        deadline = time.monotonic() + 30
        while not after and time.monotonic() < deadline:
            try:
                after = send(b, 1)
            except Exception:
                time.sleep(0.2)
        assert after, "could not publish after the restart"
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        t.join(5)
        assert all(any(u.encode() in x for x in got) for u in before + after)
    finally:
        b.close()


def test_brokers_on_one_url_share_one_transport(url: str, machinery_queue: str) -> None:
    """Brokers on one URL and configuration share the transport (the options parsed once, one
    event loop, one connection); closing one leaves the others working, the last closes it."""
    a, b = make(url, machinery_queue), make(url, machinery_queue)
    other = make(url, machinery_queue, ack_wait=7)
    transport = a.transport
    assert b.transport is transport and other.transport is not transport
    assert a.options is b.options is transport.options and a.loop is b.loop is transport.loop
    try:
        send(a)
        a.close()
        assert transport.holders == 1 and transport.is_open
        send(b)  # the connection a used is still b's
        assert len(b.pending_tasks()) == 2
    finally:
        b.purge()
        b.close()
        other.close()
    assert transport.holders == 0 and not transport.is_open
