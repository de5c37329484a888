"""Memcached-specific behaviour: URLs, Go's item layout, expiry, server selection, item size,
exactly-once chord trigger and what happens when memcached restarts."""

from __future__ import annotations

import json
import threading
import time
import zlib
from datetime import datetime, timezone

import pytest
from memcached_server import Memcached
from pymemcache.client.base import Client
from pymemcache.client.rendezvous import RendezvousHash

from machinery import Config, Server, Signature, TaskResult
from machinery.errors import BackendConnectionError, ConfigError, StateNotFoundError, TaskFailedError
from machinery.results import AsyncResult
from machinery.signature import decode_task_state, encode_group_meta, encode_task_state, new_uuid
from machinery.state import GroupMeta
from machinery_memcache.backend import (
    MAX_RELATIVE_EXPIRY,
    ItemTooLargeError,
    MemcacheBackend,
    parse_servers,
)


def backend(url: str, expire: int = 600, **options: object) -> MemcacheBackend:
    cfg = Config(
        broker="memory://", result_backend=url, results_expire_in=expire, transport_options={"memcache": options}
    )
    return MemcacheBackend(url, cfg)


def raw(url: str) -> Client:
    host, port = parse_servers(url)[0]  # type: ignore[misc]
    return Client((host, port), default_noreply=False)


def sig(name: str = "add") -> Signature:
    return Signature(name=name, uuid=new_uuid())


# -- URLs and options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("memcache://127.0.0.1:11211", [("127.0.0.1", 11211)]),
        ("memcache://cache", [("cache", 11211)]),
        ("memcache://a:1,b:2,c", [("a", 1), ("b", 2), ("c", 11211)]),
        ("memcache://a:1, b:2/", [("a", 1), ("b", 2)]),
        ("memcache://[::1]:11212,[fe80::1]", [("::1", 11212), ("fe80::1", 11211)]),
        ("memcache:///run/memcached.sock", ["/run/memcached.sock"]),
    ],
)
def test_urls_as_go_accepts_them(url: str, servers: list[object]) -> None:
    assert parse_servers(url) == servers


@pytest.mark.parametrize("url", ["memcache://", "memcache://a:1,,b:2", "memcache://a:port", "memcache://a:70000"])
def test_bad_urls_fail_on_construction(url: str) -> None:
    with pytest.raises(ConfigError, match="bad memcached server"):
        backend(url)


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"memcache\.hashing"):
        backend("memcache://a", hashing="ketama")
    with pytest.raises(ConfigError, match="unknown option"):
        backend("memcache://a", max_idle=3)


def test_construction_does_no_network_io() -> None:
    backend("memcache://192.0.2.1:1")  # TEST-NET address: would hang or fail if it connected


def test_declared_not_persistent() -> None:
    assert MemcacheBackend.persistent is False
    assert MemcacheBackend.supports_expiry is True


# -- Go's layout -----------------------------------------------------------------------------


def test_items_are_go_json_under_the_uuid(url: str) -> None:
    b, mc = backend(url), raw(url)
    s = sig()
    b.set_state_success(s, [TaskResult("int64", 2**62 + 1), TaskResult("string", "<ok>")])
    stored = mc.get(s.uuid)
    state = b.get_state(s.uuid)
    assert state is not None and stored == encode_task_state(state)  # byte for byte the Go codec
    assert state.values == [2**62 + 1, "<ok>"]

    g, tasks = new_uuid("group_"), [new_uuid(), new_uuid()]
    b.init_group(g, tasks)
    meta = b.get_group_meta(g)
    assert meta is not None and mc.get(g) == encode_group_meta(meta)


def test_reads_what_go_wrote(url: str) -> None:
    b, mc = backend(url), raw(url)
    uuid = new_uuid()
    go_json = (
        f'{{"TaskUUID":"{uuid}","TaskName":"","State":"SUCCESS",'
        '"Results":[{"Type":"int64","Value":9007199254740993}],'
        '"Error":"","CreatedAt":"2026-11-23T06:00:00.123456789Z","TTL":0}'
    )
    mc.set(uuid, go_json.encode(), expire=60)
    state = b.get_state(uuid)
    assert state is not None and state.state == "SUCCESS" and state.values == [9007199254740993]


# -- expiry ----------------------------------------------------------------------------------


def test_expiry_over_30_days_is_sent_as_a_timestamp(url: str) -> None:
    # memcached reads a relative expiry above 30 days as a Unix time in 1970: already expired.
    forty_days = 40 * 24 * 3600
    b = backend(url, expire=forty_days)
    assert abs(b._expire() - (time.time() + forty_days)) < 5
    assert backend(url, expire=MAX_RELATIVE_EXPIRY)._expire() == MAX_RELATIVE_EXPIRY
    # Go's getExpirationTimestamp: 0 means DefaultResultsExpireIn (v2/backends/memcache/memcache.go)
    assert backend(url, expire=0)._expire() == 3600
    assert backend(url, expire=-1)._expire() == 0  # Python-only "keep forever"
    s = sig()
    b.set_state_pending(s)
    assert b.get_state(s.uuid) is not None


@pytest.mark.slow
def test_results_expire(url: str) -> None:
    b = backend(url, expire=1)
    s = sig()
    b.set_state_pending(s)
    assert b.get_state(s.uuid) is not None
    time.sleep(2.1)
    assert b.get_state(s.uuid) is None


# -- item size -------------------------------------------------------------------------------


def test_too_large_result_is_a_clear_error_and_a_failure(url: str) -> None:
    b = backend(url)
    s = sig("big")
    b.set_state_pending(s)
    with pytest.raises(ItemTooLargeError, match=s.uuid) as info:
        b.set_state_success(s, [TaskResult("string", "x" * 2_000_000)])
    assert info.value.size > 2_000_000
    state = b.get_state(s.uuid)
    assert state is not None and state.state == "FAILURE" and "item size limit" in state.error
    assert state.task_name == "big"
    with pytest.raises(TaskFailedError, match="item size limit"):
        AsyncResult(s.uuid, b).get(timeout=2)


def test_a_worker_stores_failure_for_a_too_large_result_and_does_not_redeliver(url: str) -> None:
    assert ItemTooLargeError.retryable is False
    name = new_uuid()
    cfg = Config(broker=f"memory://{name}", result_backend=url, results_expire_in=600, no_unix_signals=True)
    server = Server(cfg)
    runs: list[int] = []

    @server.task("big")
    def big(n: int) -> str:
        runs.append(n)
        return "x" * n

    worker = server.new_worker("mc", 1)
    worker.backend_error_requeue_delay = 0.05
    worker.launch_in_background()
    try:
        s = Signature("big", args=[2_000_000])
        with pytest.raises(TaskFailedError, match="item size limit"):
            server.send_task(s).get(timeout=10)  # the backend's own FAILURE, or the worker's
        time.sleep(0.5)  # redeliveries every 0.05 s would have run it again
        assert runs == [2_000_000]
        state = server.backend.get_state(s.uuid)
        assert state is not None and state.state == "FAILURE"
        assert state.error.startswith("the result backend cannot store this task's state: ItemTooLargeError")
        assert server.get_pending_tasks() == [] and server.broker.dead_letters() == []  # type: ignore[attr-defined]
        assert server.send_task(Signature("big", args=[3])).get(timeout=10) == "xxx"
    finally:
        worker.quit(timeout=10)
        server.close()


def test_larger_item_limit_is_honoured() -> None:
    server = Memcached("-I", "4m")
    try:
        b = backend(server.url)
        s = sig()
        b.set_state_success(s, [TaskResult("string", "x" * 2_000_000)])
        state = b.get_state(s.uuid)
        assert state is not None and state.state == "SUCCESS" and len(state.values[0]) == 2_000_000
    finally:
        server.stop()


# -- several servers -------------------------------------------------------------------------


def test_go_server_selection(url: str, private_memcached: Memcached) -> None:
    """Default hashing picks servers[crc32(key) % n], as gomemcache does."""
    other = private_memcached.url
    urls = [url, other]
    b = backend(f"{url},{other.partition('://')[2]}")
    clients = [raw(u) for u in urls]
    for _ in range(20):
        s = sig()
        b.set_state_pending(s)
        expected = zlib.crc32(s.uuid.encode()) % 2
        assert clients[expected].get(s.uuid) is not None
        assert clients[1 - expected].get(s.uuid) is None
        assert b.get_state(s.uuid) is not None


def test_consistent_hashing_option(url: str, private_memcached: Memcached) -> None:
    other = private_memcached.url
    servers = [f"{h}:{p}" for h, p in parse_servers(url) + parse_servers(other)]  # type: ignore[misc]
    b = backend(f"memcache://{','.join(servers)}", hashing="consistent")
    ring = RendezvousHash(servers)
    clients = {name: raw(f"memcache://{name}") for name in servers}
    uuids = [new_uuid() for _ in range(20)]
    b.set_states_pending([Signature(name="x", uuid=u) for u in uuids])
    for u in uuids:
        assert clients[ring.get_node(u)].get(u) is not None
    assert all(st is not None for st in b._load_states(uuids))  # one get_many per server
    assert {ring.get_node(u) for u in uuids} == set(servers)  # both servers were used


# -- chord trigger ---------------------------------------------------------------------------


def test_chord_triggers_once_across_backends(url: str) -> None:
    g = new_uuid("group_")
    backend(url).init_group(g, [new_uuid() for _ in range(3)])
    backends = [backend(url) for _ in range(8)]
    barrier = threading.Barrier(len(backends) * 4)
    wins: list[bool] = []

    def race(b: MemcacheBackend) -> None:
        barrier.wait()
        wins.append(b.trigger_chord(g))

    threads = [threading.Thread(target=race, args=(b,)) for b in backends for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1 and len(wins) == 32
    meta = backends[0].get_group_meta(g)
    assert meta is not None and meta.chord_triggered


def test_chord_not_triggered_while_a_go_worker_holds_the_lock(url: str) -> None:
    b, mc = backend(url), raw(url)
    g = new_uuid("group_")
    now = datetime.now(timezone.utc)
    mc.set(g, encode_group_meta(GroupMeta(g, [new_uuid()], lock=True, created_at=now)), expire=60)
    assert b.trigger_chord(g) is False


def test_chord_of_unknown_group_is_not_triggered(url: str) -> None:
    assert backend(url).trigger_chord(new_uuid("group_")) is False


# -- restarts and outages --------------------------------------------------------------------


def test_restart_loses_states_and_get_says_so(private_memcached: Memcached) -> None:
    server = private_memcached
    b = backend(server.url)
    s = sig()
    b.set_state_pending(s)
    assert b.get_state(s.uuid) is not None
    server.restart()
    # The pooled connection predates the restart: the backend reconnects and just finds nothing.
    assert b.get_state(s.uuid) is None
    t0 = time.monotonic()
    with pytest.raises(StateNotFoundError, match="lost by a cache restart"):
        AsyncResult(s.uuid, b).get(timeout=30)
    assert time.monotonic() - t0 < 5
    b.set_state_success(s, [])  # and it keeps working
    assert decode_task_state(raw(server.url).get(s.uuid)).state == "SUCCESS"


def test_server_down_is_a_connection_error(private_memcached: Memcached) -> None:
    server = private_memcached
    b = backend(server.url)
    server.stop()
    with pytest.raises(BackendConnectionError, match="unreachable"):
        b.get_state(new_uuid())
    with pytest.raises(BackendConnectionError):
        b.set_state_pending(sig())
    server.start()
    s = sig()
    b.set_state_pending(s)
    assert b.get_state(s.uuid) is not None


@pytest.mark.slow
def test_worker_survives_a_restart(private_memcached: Memcached) -> None:
    """A worker keeps running through a memcached restart; new tasks complete afterwards."""
    server = private_memcached
    cfg = Config(broker="memory://mc-restart", result_backend=server.url, no_unix_signals=True)
    srv = Server(cfg)
    srv.register_task("add", lambda a, b: a + b)
    worker = srv.new_worker(consumer_tag="mc-restart", concurrency=2)
    worker.launch_in_background()
    try:
        assert srv.delay("add", 1, 2).get(timeout=10) == 3
        server.restart()
        assert srv.delay("add", 2, 3).get(timeout=10) == 5
    finally:
        worker.quit(wait=True, timeout=10)
        srv.close()


def test_raw_json_is_what_the_suite_oracle_reads(url: str) -> None:
    b = backend(url)
    s = sig()
    b.set_state_failure(s, "boom")
    obj = json.loads(raw(url).get(s.uuid))
    assert decode_task_state(json.dumps(obj)).error == "boom"


def test_backends_on_one_url_share_one_transport(url: str) -> None:
    """Backends on one URL and configuration share the transport (the servers and options
    parsed once, one set of pooled clients); the pools close with the last of them."""
    from machinery_memcache.transport import MemcacheTransport

    a, b, other = backend(url, expire=7), backend(url, expire=7), backend(url, expire=8)
    transport = a.transport
    assert isinstance(transport, MemcacheTransport) and b.transport is transport and other.transport is not transport
    assert a.options is b.options is transport.options
    opts: dict[str, dict[str, object]] = {"memcache": {}}
    server = Server(Config(broker="memory://", result_backend=url, results_expire_in=7, transport_options=opts))
    assert server.backend.transport is transport  # resolved through the plugin host: the same one
    first = sig()
    a.set_state_pending(first)
    assert b.get_state(first.uuid) is not None
    assert a._client(first.uuid) is b._client(first.uuid)  # one pool per server
    server.close()
    a.close()
    assert transport.holders == 1 and transport.is_open
    assert b.get_state(first.uuid) is not None  # a's close left b's pools open
    b.close()
    other.close()
    assert transport.holders == 0 and not transport.is_open
