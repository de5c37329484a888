"""The embedded sqlite broker beyond the conformance suite: URLs and options, leases and the
heartbeat, ETA precision, batching, the RETURNING fallback, dead letters, wake-up latency
across processes and the idle cost."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from machinery import Arg, Config, ConfigError, Server, Signature
from machinery.builtin.sqlite import _db
from machinery.builtin.sqlite.backend import SQLiteBackend
from machinery.builtin.sqlite.broker import SQLiteBroker
from machinery.builtin.sqlite.lock import SQLiteLock
from machinery.builtin.sqlite.transport import SQLiteOptions
from machinery.config import default_url
from machinery.interfaces import Delivery
from machinery.signature import decode_signature, encode_signature


def sig(name: str = "add", *values: int, **kw: object) -> Signature:
    return Signature(name, args=[Arg("int64", v) for v in values], **kw)  # type: ignore[arg-type]


@pytest.fixture
def make(db_path: Path) -> Iterator[Callable[..., SQLiteBroker]]:
    made: list[SQLiteBroker] = []

    def factory(query: str = "", **config: object) -> SQLiteBroker:
        b = SQLiteBroker(f"sqlite:///{db_path}{query}", Config(**config))  # type: ignore[arg-type]
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()


def publish(broker: SQLiteBroker, s: Signature) -> Signature:
    broker.adjust_routing_key(s)
    broker.publish(encode_signature(s), s)
    return s


def take(broker: SQLiteBroker, queue: str, n: int, timeout: float = 5.0, prefetch: int = 1) -> list[Delivery]:
    """Consume ``n`` deliveries in a thread (acking nothing)."""
    out: list[Delivery] = []
    stop = threading.Event()

    def run() -> None:
        for d in broker.consume(queue, prefetch=prefetch, stop=stop):
            d.attributes["received_at"] = time.time()
            out.append(d)
            if len(out) >= n:
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    stop.set()
    t.join(2)
    return out


# -- URLs and options ------------------------------------------------------------------------


def test_relative_and_absolute_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = SQLiteBroker("sqlite:///sub/q.db", Config())
    assert rel.path == str(tmp_path / "sub" / "q.db")
    absolute = SQLiteBroker(f"sqlite:///{tmp_path}/abs.db", Config())
    assert absolute.path == str(tmp_path / "abs.db")
    assert f"sqlite:///{tmp_path}/abs.db".startswith("sqlite:////")
    # Nothing is created until the first use; the sub-directory is created then.
    assert not (tmp_path / "sub").exists()
    publish(rel, sig("add", 1))
    assert (tmp_path / "sub" / "q.db").exists()
    rel.close()
    absolute.close()


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("sqlite://", "sqlite"),
        ("sqlite://host/q.db", "sqlite"),
        ("sqlite:///:memory:", "sqlite"),
        ("sqlite:///q.db?nope=1", "sqlite.nope"),
        ("sqlite:///q.db?visibility_timeout=0", "sqlite.visibility_timeout"),
        ("sqlite:///q.db?busy_timeout=abc", "sqlite.busy_timeout"),
        ("sqlite:///q.db?synchronous=maybe", "sqlite.synchronous"),
        ("sqlite:///q.db?poll_interval=5", "sqlite.poll_interval"),
    ],
)
def test_bad_urls_and_options_name_the_key(url: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SQLiteBroker(url, Config())
    assert info.value.key == key


def test_options_from_section_and_query(tmp_path: Path) -> None:
    cfg = Config(transport_options={"sqlite": {"visibility_timeout": 12, "busy_timeout": "2.5"}})
    b = SQLiteBroker(f"sqlite:///{tmp_path}/q.db?visibility_timeout=7", cfg)
    assert b.options.visibility_timeout == 7.0  # the URL wins
    assert b.options.busy_timeout == 2.5
    assert b.lease == 7.0
    assert b.options.heartbeat == pytest.approx(7 / 3)


def test_env_options(tmp_path: Path) -> None:
    cfg = Config.from_env({"SQLITE_VISIBILITY_TIMEOUT": "9"})
    assert cfg.section("sqlite")["visibility_timeout"] == "9"
    assert SQLiteBroker(f"sqlite:///{tmp_path}/q.db", cfg).lease == 9.0


def test_embedded_default_when_no_broker_is_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MACHINERY_DEFAULT_URL", raising=False)
    assert default_url() == "sqlite:///machinery.db"
    monkeypatch.setenv("MACHINERY_DEFAULT_URL", f"sqlite:///{tmp_path}/default.db")
    server = Server()
    assert isinstance(server.broker, SQLiteBroker)
    assert isinstance(server.backend, SQLiteBackend)
    assert isinstance(server.lock, SQLiteLock)
    assert server.broker.path == server.backend.path == str(tmp_path / "default.db")  # type: ignore[attr-defined]
    server.close()


def test_capabilities() -> None:
    assert SQLiteBroker.supports_native_delay and SQLiteBroker.supports_priority
    assert SQLiteBroker.supports_pending_listing and SQLiteBroker.supports_delayed_listing
    assert SQLiteBroker.redelivers_unacked
    assert SQLiteBroker.redelivery_timeout == SQLiteOptions().visibility_timeout


# -- messages ---------------------------------------------------------------------------------


def test_one_file_holds_queue_results_and_locks(
    make: Callable[..., SQLiteBroker], raw: Callable[..., list[tuple[object, ...]]]
) -> None:
    b = make()
    publish(b, sig("add", 1))
    tables = {r[0] for r in raw("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"machinery_messages", "machinery_states", "machinery_groups", "machinery_locks"} <= tables
    assert raw("PRAGMA journal_mode")[0][0] == "wal"
    assert raw("PRAGMA user_version")[0][0] == _db.SCHEMA_VERSION


def test_priority_then_fifo(make: Callable[..., SQLiteBroker]) -> None:
    b = make()
    for i, prio in enumerate([0, 5, 0, 9, 5]):
        publish(b, sig("add", i, priority=prio))
    got = take(b, "machinery_tasks", 5)
    assert [decode_signature(d.body).args[0].value for d in got] == [3, 1, 4, 0, 2]
    assert [s.args[0].value for s in b.pending_tasks()] == []  # all leased now


def test_custom_queues_are_separate(make: Callable[..., SQLiteBroker]) -> None:
    b = make()
    publish(b, sig("add", 1, routing_key="a"))
    publish(b, sig("add", 2, routing_key="b"))
    assert [s.args[0].value for s in b.pending_tasks("a")] == [1]
    got = take(b, "b", 1)
    assert decode_signature(got[0].body).args[0].value == 2
    assert b.purge("a") == 1
    assert b.pending_tasks("a") == []


def test_publish_many_is_one_transaction_and_claims_in_batches(
    make: Callable[..., SQLiteBroker], raw: Callable[..., list[tuple[object, ...]]]
) -> None:
    b = make()
    items = [(encode_signature(s), s) for s in (sig("add", i, routing_key="q") for i in range(100))]
    b.publish_many(items)
    assert len(b.pending_tasks("q")) == 100
    got = take(b, "q", 10, prefetch=10)
    assert [decode_signature(d.body).args[0].value for d in got] == list(range(10))
    # One claim statement took the whole batch: every one of them has the same lease end.
    leases = raw("SELECT visible_at FROM machinery_messages WHERE state = 2")
    assert len(leases) == 10 and len({r[0] for r in leases}) == 1


@pytest.mark.parametrize("returning", [True, False])
def test_claim_with_and_without_returning(make: Callable[..., SQLiteBroker], returning: bool) -> None:
    b = make()
    b.use_returning = returning and _db.HAS_RETURNING
    for i in range(5):
        publish(b, sig("add", i, priority=i % 2))
    got = take(b, "machinery_tasks", 5, prefetch=5)
    assert [decode_signature(d.body).args[0].value for d in got] == [1, 3, 0, 2, 4]
    assert all(d.tag[1] == 1 and not d.redelivered for d in got)
    for d in got:
        b.ack(d)
    assert b.pending_tasks() == []


def test_unyielded_claims_go_back_when_the_consumer_stops(
    make: Callable[..., SQLiteBroker], raw: Callable[..., list[tuple[object, ...]]]
) -> None:
    b = make()
    for i in range(5):
        publish(b, sig("add", i))
    stop = threading.Event()
    it = b.consume("machinery_tasks", prefetch=5, stop=stop)
    first = next(it)  # claims five, yields one
    it.close()  # type: ignore[attr-defined]
    assert [s.args[0].value for s in b.pending_tasks()] == [1, 2, 3, 4]
    rows = raw("SELECT deliveries FROM machinery_messages WHERE state = 0")
    assert all(r[0] == 0 for r in rows)
    b.ack(first)


def test_nack_requeue_delay_and_dead_letters(make: Callable[..., SQLiteBroker]) -> None:
    b = make()
    publish(b, sig("add", 1))
    publish(b, sig("add", 2))
    d1, d2 = take(b, "machinery_tasks", 2, prefetch=2)
    b.nack(d1, requeue=False)
    assert b.dead_letters() == [d1.body]
    assert b.dead_letters("machinery_tasks") == [d1.body]
    assert b.dead_letters("other") == []
    b.nack(d2, requeue=True, delay=0.3)
    assert [s.args[0].value for s in b.delayed_tasks()] == [2]
    t0 = time.monotonic()
    (again,) = take(b, "machinery_tasks", 1)
    assert 0.2 < time.monotonic() - t0 < 1.0
    assert again.redelivered and again.body == d2.body
    b.ack(again)
    assert b.pending_tasks() == [] and b.delayed_tasks() == []


def test_ack_of_a_lost_lease_does_not_delete_the_new_delivery(make: Callable[..., SQLiteBroker]) -> None:
    a = make("?visibility_timeout=0.3&heartbeat_interval=0.2")
    b = make("?visibility_timeout=5")
    publish(a, sig("add", 1))
    (first,) = take(a, "machinery_tasks", 1)
    a.close()  # the "dead" worker: no more heartbeats
    time.sleep(0.4)
    (second,) = take(b, "machinery_tasks", 1)
    assert second.redelivered and second.tag[1] == 2
    a.ack(first)  # stale: must not remove the message the other worker holds
    assert len(b.pending_tasks()) == 0
    b.nack(second)
    assert len(b.pending_tasks()) == 1


def test_heartbeat_keeps_a_long_task_from_being_redelivered(make: Callable[..., SQLiteBroker]) -> None:
    holder = make("?visibility_timeout=0.4")
    other = make("?visibility_timeout=0.4")
    publish(holder, sig("add", 1))
    (held,) = take(holder, "machinery_tasks", 1)
    # Five lease lengths later the message is still leased, so nobody else gets it.
    assert take(other, "machinery_tasks", 1, timeout=2.0) == []
    holder.ack(held)
    assert holder.pending_tasks() == []


def test_killed_consumer_message_comes_back_after_the_lease(db_path: Path, make: Callable[..., SQLiteBroker]) -> None:
    url = f"sqlite:///{db_path}?visibility_timeout=0.5"
    b = make("?visibility_timeout=0.5")
    publish(b, sig("add", 7))
    code = textwrap.dedent(
        f"""
        import os, threading
        from machinery import Config
        from machinery.builtin.sqlite.broker import SQLiteBroker
        b = SQLiteBroker({url!r}, Config())
        d = next(b.consume("machinery_tasks", prefetch=1, stop=threading.Event()))
        print("claimed", flush=True)
        os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "claimed" in proc.stdout and proc.returncode == -9
    assert take(b, "machinery_tasks", 1, timeout=0.1) == []  # still leased right after the kill
    t0 = time.monotonic()
    (again,) = take(b, "machinery_tasks", 1, timeout=3)
    assert again.redelivered and time.monotonic() - t0 < 1.5
    b.ack(again)


# -- ETA and wake-ups ---------------------------------------------------------------------------


def test_eta_is_held_listed_and_delivered_on_time(make: Callable[..., SQLiteBroker]) -> None:
    b = make()
    eta = datetime.now(timezone.utc) + timedelta(seconds=0.6)
    publish(b, sig("add", 1, eta=eta))
    publish(b, sig("add", 2, eta=eta + timedelta(seconds=60), routing_key="later"))
    assert [s.args[0].value for s in b.delayed_tasks()] == [1, 2]
    assert b.pending_tasks() == []
    (d,) = take(b, "machinery_tasks", 1, timeout=3)
    late = d.attributes["received_at"] - eta.timestamp()
    assert 0 <= late < 0.05, f"delivered {late * 1000:.1f} ms after its ETA"
    assert [s.args[0].value for s in b.delayed_tasks()] == [2]
    assert b.purge("later") == 1


def test_publish_from_another_process_wakes_an_idle_consumer(db_path: Path, make: Callable[..., SQLiteBroker]) -> None:
    b = make()
    publish(b, sig("add", 0))  # create the file
    take(b, "machinery_tasks", 1)
    url = f"sqlite:///{db_path}"
    code = textwrap.dedent(
        f"""
        import time
        from machinery import Arg, Config, Signature
        from machinery.builtin.sqlite.broker import SQLiteBroker
        from machinery.signature import encode_signature
        b = SQLiteBroker({url!r}, Config())
        time.sleep(0.5)
        s = Signature("add", args=[Arg("float64", time.time())], routing_key="machinery_tasks")
        b.publish(encode_signature(s), s)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        (d,) = take(b, "machinery_tasks", 1, timeout=10)
        latency = d.attributes["received_at"] - decode_signature(d.body).args[0].value
    finally:
        proc.wait(10)
    assert latency < 0.1, f"woke {latency * 1000:.1f} ms after the publish"


def test_stop_is_noticed_quickly_and_idle_cost_is_small(make: Callable[..., SQLiteBroker]) -> None:
    b = make()
    stop = threading.Event()
    t = threading.Thread(target=lambda: list(b.consume("idle", prefetch=1, stop=stop)), daemon=True)
    t.start()
    time.sleep(0.3)
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(1.5)
    share = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    t0 = time.monotonic()
    stop.set()
    t.join(2)
    assert not t.is_alive() and time.monotonic() - t0 < 0.2
    # Polling PRAGMA data_version every 10 ms costs about 2 % of a core here; allow slack.
    assert share < 0.10, f"idle consumer used {share:.1%} of a core"


def test_threads_and_processes_each_message_delivered_once(
    db_path: Path, raw: Callable[..., list[tuple[object, ...]]], make: Callable[..., SQLiteBroker]
) -> None:
    url = f"sqlite:///{db_path}"
    n = 300
    b = make()
    publish(b, sig("add", -1, routing_key="warmup"))
    code = textwrap.dedent(
        f"""
        import os, threading, sys, time
        from machinery import Config
        from machinery.builtin.sqlite.broker import SQLiteBroker
        b = SQLiteBroker({url!r}, Config())
        stop = threading.Event()
        def watch():
            while not os.path.exists({str(db_path) + ".stop"!r}):
                time.sleep(0.05)
            stop.set()
        threading.Thread(target=watch, daemon=True).start()
        open(sys.argv[1], "w").close()  # ready
        for d in b.consume("shared", prefetch=4, stop=stop):
            print(d.body.decode(), flush=True)
            time.sleep(0.001)
            b.ack(d)
        """
    )
    # consumers write to files: a pipe nobody reads until the end would fill up and block them
    out_files = [open(db_path.parent / f"consumer{i}.out", "w+") for i in range(2)]  # noqa: SIM115
    ready = [db_path.parent / f"consumer{i}.ready" for i in range(2)]
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(r)], stdout=f, text=True) for f, r in zip(out_files, ready)
    ]
    deadline = time.monotonic() + 30
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.02)

    def produce(k: int) -> None:
        for i in range(n // 3):
            publish(b, sig("add", k * 1000 + i, routing_key="shared"))

    publishers = [threading.Thread(target=produce, args=(k,)) for k in range(3)]
    for t in publishers:
        t.start()
    for t in publishers:
        t.join()
    # stop the consumers only once everything was taken and acknowledged (no fixed timer)
    deadline = time.monotonic() + 60
    left = "SELECT count(*) FROM machinery_messages WHERE queue = 'shared'"
    while raw(left)[0][0] and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(str(db_path) + ".stop").write_text("1")
    for p in procs:
        p.wait(timeout=30)
    outs = []
    for f in out_files:
        f.seek(0)
        outs.append(f.read())
        f.close()
    values = [decode_signature(line).args[0].value for out in outs for line in out.splitlines() if line]
    assert sorted(values) == sorted(k * 1000 + i for k in range(3) for i in range(n // 3))
    assert all(out.strip() for out in outs), "both consumer processes should have received messages"
    assert raw("SELECT count(*) FROM machinery_messages WHERE queue = 'shared'")[0][0] == 0


def test_fork_does_not_reuse_parent_connections(make: Callable[..., SQLiteBroker]) -> None:
    b = make()
    publish(b, sig("add", 1))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            publish(b, sig("add", 2))
            os._exit(0 if len(b.pending_tasks()) == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(b.pending_tasks()) == 2


def test_an_idle_consumer_looks_quickly_at_first_then_backs_off(make: Callable[..., SQLiteBroker]) -> None:
    """Another process's commit is seen within a fraction of a millisecond right after the queue
    went idle (a round trip's next message), and every ``poll_interval`` once idle for long."""
    b = make()
    looks: list[float] = []
    real = b._data_version

    def spy(conn: Any) -> int:
        looks.append(time.monotonic())
        return real(conn)

    b._data_version = spy  # type: ignore[method-assign]
    stop = threading.Event()
    t = threading.Thread(target=lambda: list(b.consume("idle", prefetch=1, stop=stop)), daemon=True)
    t.start()
    time.sleep(0.5)
    stop.set()
    t.join(2)
    gaps = sorted(y - x for x, y in itertools.pairwise(looks[1:5]))
    assert gaps[1] < 0.005, f"first looks {[round(g * 1000, 2) for g in gaps]} ms apart"
    late = [y - x for x, y in itertools.pairwise(looks[-6:])]
    assert sorted(late)[2] > 0.007, f"idle looks {[round(g * 1000, 2) for g in late]} ms apart"
