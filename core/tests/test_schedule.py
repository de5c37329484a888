"""Periodic entries and the scheduler on the in-process memory transport.

Most tests drive :meth:`Scheduler.run_pending` with explicit times, so they are exact and fast;
the threaded ones use the real clock.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from machinery import Chain, Chord, Config, Group, Server, Signature
from machinery.cron import CronSpecError
from machinery.errors import ConfigError, LockError
from machinery.schedule import NAME_HEADER, TICK_HEADER, PeriodicEntry, Scheduler, lock_key
from machinery.signature import format_time

UTC = timezone.utc
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def make_server(name: str, **cfg: object) -> Server:
    url = f"memory://{name}"
    return Server(Config(broker=url, result_backend=url, lock=url, **cfg))  # type: ignore[arg-type]


@pytest.fixture
def name() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def server(name: str) -> Server:
    return make_server(name)


def sent(server: Server) -> list[Signature]:
    return server.broker.pending_tasks(server.config.default_queue)


def add(a: int = 1, b: int = 2) -> Signature:
    return Signature("add", args=[a, b])


# -- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "register",
    [
        lambda s, spec: s.register_periodic_task(spec, "p", add()),
        lambda s, spec: s.register_periodic_group(spec, "p", Group(add(), add())),
        lambda s, spec: s.register_periodic_chain(spec, "p", Chain(add(), add())),
        lambda s, spec: s.register_periodic_chord(spec, "p", Chord(Group(add(), add()), Signature("sum"))),
    ],
    ids=["task", "group", "chain", "chord"],
)
def test_bad_spec_is_an_error_at_registration_showing_the_spec(server: Server, register: object) -> None:
    with pytest.raises(CronSpecError, match=r"invalid cron spec '0 25 \* \* \?': hour field '25'"):
        register(server, "0 25 * * ?")  # type: ignore[operator]
    assert server.periodic_entries == []
    register(server, "0 6 * * ?")  # type: ignore[operator]
    assert [e.spec for e in server.periodic_entries] == ["0 6 * * ?"]


def test_duplicate_name_is_rejected(server: Server) -> None:
    server.register_periodic_task("@hourly", "report", add())
    with pytest.raises(ValueError, match="'report' is already registered"):
        server.register_periodic_chain("@daily", "report", Chain(add()))
    assert len(server.periodic_entries) == 1


def test_bad_arguments(server: Server) -> None:
    with pytest.raises(ValueError, match="non-empty name"):
        server.register_periodic_task("@hourly", "", add())
    with pytest.raises(TypeError, match="signature must be a Signature, got Group"):
        server.register_periodic_task("@hourly", "x", Group(add()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="group must be a Group"):
        server.register_periodic_group("@hourly", "x", [add()])  # type: ignore[arg-type]


def test_config_timezone_applies_and_is_validated(name: str) -> None:
    srv = make_server(name, timezone="Asia/Tokyo")
    srv.register_periodic_task("0 9 * * *", "morning", add())
    (entry,) = srv.periodic_entries
    assert entry.schedule.next(T0).astimezone(UTC) == datetime(2024, 5, 2, 0, 0, tzinfo=UTC)
    bad = make_server(name, timezone="Atlantis/Capital")
    with pytest.raises(ConfigError, match="unknown time zone 'Atlantis/Capital'"):
        bad.register_periodic_task("0 9 * * *", "morning", add())


def test_template_is_copied_at_registration(server: Server) -> None:
    sig = add(1, 2)
    server.register_periodic_task("@every 1s", "p", sig)
    sig.args[0].value = 100
    sig.name = "other"
    Scheduler(server).run_pending(T0)
    (msg,) = sent(server)
    assert (msg.name, msg.arg_values) == ("add", [1, 2])


# -- exactly once, fresh UUIDs -------------------------------------------------------------------


def test_each_tick_is_sent_once_with_fresh_uuids_and_tick_headers(server: Server) -> None:
    server.register_periodic_task("@every 1s", "p", add())
    sch = Scheduler(server)
    assert sch.run_pending(T0 + timedelta(milliseconds=100)) == pytest.approx(0.9)
    assert sch.run_pending(T0 + timedelta(milliseconds=500)) == pytest.approx(0.5)  # nothing new
    sch.run_pending(T0 + timedelta(seconds=1, milliseconds=20))
    sch.run_pending(T0 + timedelta(seconds=2, milliseconds=20))
    msgs = sent(server)
    assert [m.headers[TICK_HEADER] for m in msgs] == [format_time(T0 + timedelta(seconds=i)) for i in range(3)]
    assert {m.headers[NAME_HEADER] for m in msgs} == {"p"}
    assert len({m.uuid for m in msgs}) == 3
    assert all(m.uuid.startswith("task_") for m in msgs)
    assert all(server.get_state(m.uuid) is not None for m in msgs)  # PENDING stored, like send_task


def test_several_schedulers_send_each_tick_once(name: str) -> None:
    servers = [make_server(name) for _ in range(3)]  # one lock owner each, shared store
    for srv in servers:
        srv.register_periodic_task("@every 1s", "p", add())
    schedulers = [Scheduler(s) for s in servers]
    for i in range(5):
        for j, sch in enumerate(schedulers):
            sch.run_pending(T0 + timedelta(seconds=i, milliseconds=10 + 40 * j))
    msgs = sent(servers[0])
    assert Counter(m.headers[TICK_HEADER] for m in msgs) == {
        format_time(T0 + timedelta(seconds=i)): 1 for i in range(5)
    }


def test_lock_key_and_ttl(server: Server) -> None:
    server.register_periodic_task("@every 1s", "fast", add())
    server.register_periodic_task("@daily", "slow", add())
    taken: list[tuple[str, timedelta]] = []
    real = server.lock.acquire

    def spy(key: str, ttl: timedelta) -> bool:
        taken.append((key, ttl))
        return real(key, ttl)

    server.lock.acquire = spy  # type: ignore[method-assign]
    Scheduler(server).run_pending(T0 + timedelta(milliseconds=5))
    # the daily tick (00:00) was 12 h before the start: not even tried
    assert taken == [(f"machinery:periodic:fast:{int(T0.timestamp())}", timedelta(seconds=120))]  # grace + 60 s
    taken.clear()
    midnight = T0.replace(hour=0)
    Scheduler(server).run_pending(midnight + timedelta(seconds=2))
    assert taken == [
        (lock_key("fast", midnight + timedelta(seconds=2)), timedelta(seconds=120)),
        (f"machinery:periodic:slow:{int(midnight.timestamp())}", timedelta(hours=1)),  # interval, capped
    ]


def test_tick_taken_elsewhere_is_not_sent(server: Server, name: str) -> None:
    server.register_periodic_task("@every 1s", "p", add())
    other = make_server(name)
    assert other.lock.acquire(lock_key("p", T0), timedelta(seconds=60))
    Scheduler(server).run_pending(T0 + timedelta(milliseconds=10))
    assert sent(server) == []


# -- missed ticks ------------------------------------------------------------------------------


def test_restart_after_downtime_does_not_burst(server: Server, name: str, caplog: pytest.LogCaptureFixture) -> None:
    server.register_periodic_task("@every 1s", "p", add())
    first = Scheduler(server)
    first.run_pending(T0)
    first.run_pending(T0 + timedelta(seconds=1))
    # down for an hour, then a new process starts: only the latest tick (< 1 s old) goes out
    restarted = make_server(name)
    restarted.register_periodic_task("@every 1s", "p", add())
    with caplog.at_level(logging.DEBUG, logger="machinery.schedule"):
        Scheduler(restarted).run_pending(T0 + timedelta(hours=1, milliseconds=300))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing to report at start
    ticks = [m.headers[TICK_HEADER] for m in sent(server)]
    assert ticks == [format_time(T0), format_time(T0 + timedelta(seconds=1)), format_time(T0 + timedelta(hours=1))]


def test_restart_sends_the_last_tick_only_within_the_grace_period(server: Server, name: str) -> None:
    server.register_periodic_task("0 * * * *", "hourly", add())
    Scheduler(server).run_pending(T0 + timedelta(seconds=59))  # 12:00 tick, 59 s late: sent
    assert len(sent(server)) == 1
    server.broker.purge()
    again = make_server(name)  # a restarted process: same stores, new lock owner
    again.register_periodic_task("0 * * * *", "hourly", add())
    Scheduler(again).run_pending(T0 + timedelta(seconds=59, milliseconds=500))  # same tick: lock held
    assert sent(server) == []
    late = make_server(uuid.uuid4().hex)
    late.register_periodic_task("0 * * * *", "hourly", add())
    sch = Scheduler(late)
    assert sch.run_pending(T0 + timedelta(seconds=61)) == pytest.approx(3600 - 61)  # too late: skipped
    assert sent(late) == []
    sch.run_pending(T0 + timedelta(hours=1, seconds=1))
    assert [m.headers[TICK_HEADER] for m in sent(late)] == [format_time(T0 + timedelta(hours=1))]


def test_running_scheduler_that_falls_behind_skips_and_logs(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.register_periodic_task("@every 1s", "p", add())
    sch = Scheduler(server)
    sch.run_pending(T0)
    with caplog.at_level(logging.WARNING, logger="machinery.schedule"):
        sch.run_pending(T0 + timedelta(seconds=5, milliseconds=100))  # suspended 5 s
        sch.run_pending(T0 + timedelta(days=2, milliseconds=100))  # suspended 2 days
    ticks = [m.headers[TICK_HEADER] for m in sent(server)]
    assert ticks == [format_time(T0), format_time(T0 + timedelta(seconds=5)), format_time(T0 + timedelta(days=2))]
    warnings = [r.getMessage() for r in caplog.records]
    assert any("skipped 4 tick(s) from 2024-05-01T12:00:01Z" in w for w in warnings), warnings
    assert any("skipped some tick(s) from 2024-05-01T12:00:06Z" in w for w in warnings), warnings


def test_grace_is_configurable(server: Server) -> None:
    server.register_periodic_task("0 * * * *", "hourly", add())
    Scheduler(server, grace=timedelta(seconds=5)).run_pending(T0 + timedelta(seconds=6))
    assert sent(server) == []
    with pytest.raises(ValueError, match="grace must be positive"):
        Scheduler(server, grace=timedelta(0))


# -- workflows -------------------------------------------------------------------------------------


def run_two_ticks(server: Server) -> None:
    sch = Scheduler(server)
    sch.run_pending(T0)
    sch.run_pending(T0 + timedelta(seconds=1))


def test_periodic_group_has_fresh_group_and_task_uuids(server: Server) -> None:
    group = Group(add(1, 1), add(5, 5))
    server.register_periodic_group("@every 1s", "g", group)
    run_two_ticks(server)
    msgs = sent(server)
    assert len(msgs) == 4
    groups = [m.group_uuid for m in msgs]
    assert groups[0] == groups[1] != groups[2] == groups[3]
    assert group.group_uuid not in groups
    assert len({m.uuid for m in msgs} | set(group.uuids())) == 6
    assert all(m.group_task_count == 2 for m in msgs)
    assert server.backend.group_task_states(groups[2], 2)  # group recorded, like send_group
    assert [m.arg_values for m in msgs] == [[1, 1], [5, 5], [1, 1], [5, 5]]


def test_periodic_chain_has_fresh_uuids_and_links(server: Server) -> None:
    chain = Chain(add(1, 1), add(5, 5), Signature("multiply", args=[4]))
    server.register_periodic_chain("@every 1s", "c", chain)
    run_two_ticks(server)
    firsts = sent(server)
    assert len(firsts) == 2  # only the first task is sent; workers send the rest
    uuids = set()
    for m in firsts:
        (second,) = m.on_success
        (third,) = second.on_success
        assert (m.name, second.name, third.name) == ("add", "add", "multiply")
        assert second.headers[TICK_HEADER] == third.headers[TICK_HEADER] == m.headers[TICK_HEADER]
        uuids |= {m.uuid, second.uuid, third.uuid}
    assert len(uuids) == 6
    assert not uuids & {t.uuid for t in chain.tasks}


def test_periodic_chord_has_fresh_group_task_and_callback_uuids(server: Server) -> None:
    chord = Chord(Group(add(1, 1), add(5, 5)), Signature("multiply"))
    server.register_periodic_chord("@every 1s", "ch", chord)
    run_two_ticks(server)
    msgs = sent(server)
    assert len(msgs) == 4
    callbacks = [m.chord_callback for m in msgs]
    assert all(cb is not None and cb.name == "multiply" for cb in callbacks)
    cb_uuids = [cb.uuid for cb in callbacks if cb is not None]
    assert cb_uuids[0] == cb_uuids[1] != cb_uuids[2] == cb_uuids[3]
    assert chord.callback.uuid not in cb_uuids
    assert msgs[0].group_uuid != msgs[2].group_uuid
    assert len({m.uuid for m in msgs}) == 4


def test_every_tick_is_logged_with_its_uuids(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.register_periodic_task("@every 1s", "p", add())
    server.register_periodic_group("@every 1s", "g", Group(add(), add()))
    with caplog.at_level(logging.INFO, logger="machinery.schedule"):
        Scheduler(server).run_pending(T0)
    msgs = sent(server)
    lines = [r.getMessage() for r in caplog.records if r.name == "machinery.schedule"]
    task_msg = next(m for m in msgs if m.headers[NAME_HEADER] == "p")
    assert f"periodic 'p': tick 2024-05-01T12:00:00Z sent task {task_msg.uuid}" in lines
    group_msgs = [m for m in msgs if m.headers[NAME_HEADER] == "g"]
    line = next(x for x in lines if x.startswith("periodic 'g'"))
    assert group_msgs[0].group_uuid in line
    assert all(m.uuid in line for m in group_msgs)


# -- failures ----------------------------------------------------------------------------------------


def test_lock_failure_is_logged_and_nothing_sent(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.register_periodic_task("@every 1s", "p", add())

    def broken(key: str, ttl: timedelta) -> bool:
        raise LockError("lock server unreachable")

    server.lock.acquire = broken  # type: ignore[method-assign]
    sch = Scheduler(server)
    with caplog.at_level(logging.ERROR, logger="machinery.schedule"):
        sch.run_pending(T0)
    assert sent(server) == []
    assert "tick 2024-05-01T12:00:00Z not sent: cannot take lock" in caplog.text
    assert "lock server unreachable" in caplog.text


def test_send_failure_is_logged_and_the_scheduler_goes_on(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.register_periodic_task("@every 1s", "p", add())
    calls = 0
    real = server.broker.publish

    def flaky(body: bytes, sig: Signature) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("broker down")
        real(body, sig)

    server.broker.publish = flaky  # type: ignore[method-assign,assignment]
    sch = Scheduler(server)
    with caplog.at_level(logging.ERROR, logger="machinery.schedule"):
        sch.run_pending(T0)
        sch.run_pending(T0 + timedelta(seconds=1))
    assert "tick 2024-05-01T12:00:00Z not sent: broker down" in caplog.text
    assert [m.headers[TICK_HEADER] for m in sent(server)] == [format_time(T0 + timedelta(seconds=1))]


# -- threads, real clock ----------------------------------------------------------------------------


def test_start_stop_is_prompt_and_sleeps_between_ticks(server: Server) -> None:
    server.register_periodic_task("@hourly", "p", add())
    passes = 0
    sch = Scheduler(server)
    real = sch.run_pending

    def counting(now: datetime | None = None) -> float:
        nonlocal passes
        passes += 1
        return real(now)

    sch.run_pending = counting  # type: ignore[method-assign]
    sch.start()
    time.sleep(0.5)
    assert sch.running
    began = time.monotonic()
    sch.stop()
    assert time.monotonic() - began < 1.0
    assert not sch.running
    assert passes == 1  # no polling: one pass, then asleep until the next tick


def test_run_forever_stops_on_the_given_event(server: Server) -> None:
    server.register_periodic_task("@every 1s", "p", add())
    stop = threading.Event()
    sch = Scheduler(server)
    t = threading.Thread(target=sch.run_forever, args=(stop,))
    t.start()
    time.sleep(1.5)
    stop.set()
    t.join(2)
    assert not t.is_alive()
    assert 1 <= len(sent(server)) <= 3


def test_worker_with_beat_runs_the_scheduler(server: Server) -> None:
    server.register_periodic_task("@every 1s", "p", add())
    worker = server.new_worker("beat-test", 1, queue="elsewhere")
    worker.beat = True
    worker.launch_in_background()
    time.sleep(1.6)
    worker.quit(timeout=5)
    assert 1 <= len(sent(server)) <= 3


@pytest.mark.slow
def test_three_scheduler_threads_send_each_tick_once(name: str) -> None:
    servers = [make_server(name) for _ in range(3)]
    for srv in servers:
        srv.register_periodic_task("@every 1s", "p", add())
    schedulers = [Scheduler(s).start() for s in servers]
    time.sleep(4.2)
    for sch in schedulers:
        sch.stop()
    counts = Counter(m.headers[TICK_HEADER] for m in sent(servers[0]))
    assert set(counts.values()) == {1}, counts
    ticks = sorted(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in counts)
    assert len(ticks) >= 4
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks)), ticks


def test_entry_repr() -> None:
    e = PeriodicEntry.task("0 6 * * ?", "periodic-task", add())
    assert repr(e) == "PeriodicEntry(task 'periodic-task' on '0 6 * * ?')"


def test_one_scheduler_per_server_per_process(server: Server, name: str) -> None:
    server.register_periodic_task("@hourly", "p", add())
    first = Scheduler(server).start()
    try:
        with pytest.raises(RuntimeError, match="another scheduler is already running on this server"):
            Scheduler(server).start()
        with pytest.raises(RuntimeError, match="already running"):
            first.start()
        other = make_server(name)  # its own lock instance: fine
        other.register_periodic_task("@hourly", "p", add())
        Scheduler(other).start().stop()
    finally:
        first.stop()
    Scheduler(server).start().stop()  # released on stop
