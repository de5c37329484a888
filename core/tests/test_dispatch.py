"""The task threads' dispatcher (machinery.dispatch): as few threads woken as the work needs."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from machinery import Config, Server, Signature
from machinery.dispatch import Dispatcher, Seat, task_code_ran


class _Thread:
    """A task thread driven by the test: it takes a delivery, then waits for ``finish``."""

    def __init__(self, d: Dispatcher, name: str, code: float = 0.0) -> None:
        self.d = d
        self.name = name
        self.code = code  # seconds its tasks' own code "ran", told to the dispatcher
        self.seat = Seat()
        self.got: list[Any] = []
        self.finish = threading.Semaphore(0)
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.thread.start()

    def run(self) -> None:
        finished = False
        while True:
            item = self.d.take(self.seat, finished)
            if item is None:
                return
            self.got.append(item)
            self.finish.acquire()
            if self.code:
                task_code_ran(self.code)
            finished = True


def _until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.002)
    return cond()


def _parked(d: Dispatcher, n: int) -> bool:
    return _until(lambda: len(d._idle) == n)


def _put(d: Dispatcher, item: Any) -> None:
    assert d.reserve(threading.Event())
    d.put(item)


def test_a_running_short_task_takes_the_next_delivery_itself() -> None:
    d = Dispatcher(4, stall=30.0, eager=1)
    a, b = _Thread(d, "a"), _Thread(d, "b")
    assert _parked(d, 2)
    _put(d, 1)  # nobody runs: a parked thread is woken (the last parked: b)
    assert _until(lambda: len(a.got) + len(b.got) == 1)
    first, other = (a, b) if a.got else (b, a)
    _put(d, 2)  # the running thread's task is fresh: nobody is woken for it
    time.sleep(0.2)
    assert other.got == [] and d.waiting == 1
    first.finish.release()  # done: it takes delivery 2 itself, without a wake-up
    assert _until(lambda: first.got == [1, 2])
    assert other.got == []
    first.finish.release()
    d.stop()


def test_threads_are_woken_once_the_running_task_stalls() -> None:
    d = Dispatcher(4, stall=0.05, eager=1)
    a, b = _Thread(d, "a"), _Thread(d, "b")
    assert _parked(d, 2)
    _put(d, 1)
    assert _until(lambda: len(a.got) + len(b.got) == 1)
    first, other = (a, b) if a.got else (b, a)
    t0 = time.monotonic()
    _put(d, 2)  # the running task is blocked (it never finishes here): the monitor wakes the other
    assert _until(lambda: other.got == [2])
    assert time.monotonic() - t0 >= 0.04
    assert first.got == [1]
    first.finish.release()
    other.finish.release()
    d.stop()


def test_a_thread_back_from_a_long_task_wakes_one_for_the_waiting_deliveries() -> None:
    d = Dispatcher(4, stall=0.5, eager=1)
    a, b, c = _Thread(d, "a"), _Thread(d, "b"), _Thread(d, "c")
    assert _parked(d, 3)
    _put(d, 1)
    assert _until(lambda: [t.got for t in (a, b, c)].count([1]) == 1)
    first = next(t for t in (a, b, c) if t.got)
    time.sleep(0.6)  # its task takes longer than ``stall`` (blocked, say)
    _put(d, 2)  # the running task is stale: a parked thread is woken for it
    assert _until(lambda: sum(len(t.got) for t in (a, b, c)) == 2)
    second = next(t for t in (a, b, c) if t.got == [2])
    t0 = time.monotonic()
    _put(d, 3)
    _put(d, 4)  # left for the fresh second thread, until the first comes back from its long task:
    first.finish.release()  # it takes 3 and wakes the last parked thread for 4
    third = next(t for t in (a, b, c) if t is not first and t is not second)
    assert _until(lambda: third.got == [4], timeout=5)
    assert time.monotonic() - t0 < 0.45  # not the monitor, once the second's task went stale
    assert first.got == [1, 3] and second.got == [2]
    for t in (a, b, c):
        t.finish.release()
    d.stop()


def test_two_threads_run_without_waiting_for_a_stall() -> None:
    """One thread runs tasks while another waits for a round trip (the Redis batcher's
    pipeline): below ``eager`` running threads a waiting delivery wakes a parked one at once."""
    d = Dispatcher(4, stall=30.0, eager=2)
    ts = [_Thread(d, n) for n in "abc"]
    assert _parked(d, 3)
    _put(d, 1)
    assert _until(lambda: sum(len(t.got) for t in ts) == 1)
    _put(d, 2)  # one fresh thread runs: a second is woken all the same
    assert _until(lambda: sum(len(t.got) for t in ts) == 2, timeout=1)
    _put(d, 3)  # two run: the third waits for one of them
    time.sleep(0.2)
    assert sum(len(t.got) for t in ts) == 2 and d.waiting == 1
    for t in ts:
        t.finish.release()
    assert _until(lambda: sum(len(t.got) for t in ts) == 3)
    for t in ts:
        t.finish.release()
    d.stop()


def test_the_last_parked_thread_is_woken_first() -> None:
    d = Dispatcher(4, stall=0.0)
    a = _Thread(d, "a")
    assert _parked(d, 1)
    b = _Thread(d, "b")
    assert _parked(d, 2)
    _put(d, 1)
    assert _until(lambda: b.got == [1])
    assert a.got == []
    b.finish.release()
    d.stop()


def test_reserve_never_exceeds_the_concurrency_and_stops() -> None:
    d = Dispatcher(2, stall=0.0)
    stop = threading.Event()
    assert d.reserve(stop) and d.reserve(stop)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(d.reserve(stop)), daemon=True)
    t.start()
    time.sleep(0.25)
    assert got == []  # both slots held
    d.unreserve()
    t.join(5)
    assert got == [True]
    t = threading.Thread(target=lambda: got.append(d.reserve(stop)), daemon=True)
    t.start()
    time.sleep(0.15)
    stop.set()
    t.join(5)
    assert got == [True, False]


def test_stop_lets_the_running_task_finish_returns_the_waiting_and_ends_the_threads() -> None:
    d = Dispatcher(4, stall=30.0)
    a = _Thread(d, "a")
    assert _parked(d, 1)
    _put(d, 1)
    assert _until(lambda: a.got == [1])
    _put(d, 2)
    _put(d, 3)
    assert d.stop() == [2, 3]  # not started: the worker gives them back to the broker
    a.finish.release()
    a.thread.join(5)
    assert not a.thread.is_alive()
    assert a.got == [1]
    assert d.in_flight == 0


@pytest.mark.parametrize("concurrency", [64])
def test_a_wide_worker_runs_short_tasks_on_few_threads(concurrency: int) -> None:
    """``-c 64`` with no-op tasks: the messages do not spread over 64 threads contending for the
    GIL; the thread that finishes one runs the next (the dispatcher's rule, with a stall
    threshold that a loaded machine cannot reach)."""
    name = uuid.uuid4().hex
    srv = Server(Config(broker=f"memory://{name}", result_backend=f"memory://{name}"))
    threads: set[str] = set()

    @srv.task("noop")
    def noop(x: int) -> int:
        threads.add(threading.current_thread().name)
        return x

    n = 400
    for i in range(n):
        srv.send_task(Signature("noop", args=[i]))
    w = srv.new_worker("wide", concurrency)
    w.dispatch_stall = 5.0
    w.launch_in_background()
    try:
        assert _until(lambda: w.info().tasks_done >= n, timeout=60)
    finally:
        w.quit()
    assert len(threads) <= 3, sorted(threads)


def test_in_flight_counts_handed_deliveries_not_the_consumers_reserved_slot() -> None:
    """An idle worker's consumer holds a reserved slot while it waits for the broker: that is
    not a task in flight (a warm shutdown said 'finishing 1 in-flight task(s)' with none)."""
    d = Dispatcher(2, stall=30.0, eager=1)
    stop = threading.Event()
    assert d.reserve(stop)
    assert d.in_flight == 0
    d.unreserve()
    assert d.in_flight == 0
    a = _Thread(d, "a")
    assert _parked(d, 1)
    _put(d, "x")
    assert _until(lambda: a.got == ["x"])
    assert d.reserve(stop)  # the consumer waits for the next one
    assert d.in_flight == 1
    a.finish.release()
    assert _until(lambda: d.in_flight == 0)
    d.unreserve()
    d.stop()


def _reserves(d: Dispatcher) -> int:
    """How many more slots the consumer can reserve now (then gives them back)."""
    n = 0
    while True:
        with d._lock:
            if d._held >= d._limit:
                break
        assert d.reserve(threading.Event())
        n += 1
    for _ in range(n):
        d.unreserve()
    return n


def test_quick_tasks_read_ahead_long_ones_do_not() -> None:
    """``prefetch`` slots beyond the concurrency, only while the tasks finish quickly."""
    d = Dispatcher(1, stall=30.0, prefetch=2)
    a = _Thread(d, "a")
    assert _parked(d, 1)
    assert _reserves(d) == 1  # no task finished yet: no read-ahead
    for i in range(3):  # quick tasks
        _put(d, i)
        assert _until(lambda i=i: a.got[-1:] == [i])
        a.finish.release()
    assert _until(lambda: d.in_flight == 0)
    assert _reserves(d) == 3  # the concurrency and 2 read ahead
    _put(d, "slow")
    assert _until(lambda: a.got[-1:] == ["slow"])
    _put(d, "ahead")  # read ahead while the slow one runs
    time.sleep(0.3)
    a.finish.release()  # 300 ms: the average is no longer quick
    assert _until(lambda: a.got[-1:] == ["ahead"])
    a.finish.release()
    assert _until(lambda: d.in_flight == 0)
    assert _reserves(d) == 1
    d.stop()


def test_without_prefetch_the_concurrency_bounds_what_is_held() -> None:
    d = Dispatcher(2, stall=30.0)
    a = _Thread(d, "a")
    assert _parked(d, 1)
    for i in range(3):
        _put(d, i)
        assert _until(lambda i=i: a.got[-1:] == [i])
        a.finish.release()
    assert _until(lambda: d.in_flight == 0)
    assert _reserves(d) == 2
    d.stop()


def test_stop_returns_the_deliveries_not_started() -> None:
    d = Dispatcher(1, stall=30.0, prefetch=1)
    a = _Thread(d, "a")
    assert _parked(d, 1)
    _put(d, 0)
    assert _until(lambda: a.got == [0])
    a.finish.release()
    _put(d, 1)
    assert _until(lambda: a.got == [0, 1])
    _put(d, 2)  # read ahead: waits for the running thread
    assert d.waiting == 1
    assert d.stop() == [2]
    assert d.waiting == 0 and d.in_flight == 1  # the running one finishes
    a.finish.release()
    assert _until(lambda: not a.thread.is_alive())
    assert a.got == [0, 1]


def _three_running(d: Dispatcher, code: float = 0.0) -> list[_Thread]:
    # three threads, each running one delivery (woken one after another as the tasks stall)
    ts = [_Thread(d, n, code) for n in "abc"]
    assert _parked(d, 3)
    for i in (1, 2, 3):
        _put(d, i)
    assert _until(lambda: sorted(x for t in ts for x in t.got) == [1, 2, 3])
    return ts


def test_quick_tasks_get_no_more_threads_while_python_is_saturated() -> None:
    """A quick task waiting for the GIL looks stalled: while the process is busy (its CPU at or
    above ``saturation``) that wakes nobody beyond ``eager`` threads (the -c 64 cliff)."""
    d = Dispatcher(8, stall=0.01, eager=1, saturation=0.0, long=30.0)
    ts = [_Thread(d, n) for n in "ab"]
    assert _parked(d, 2)
    _put(d, 1)
    assert _until(lambda: sum(len(t.got) for t in ts) == 1)
    _put(d, 2)
    time.sleep(0.3)  # stalled 30 times over, but saturated: left for the running thread
    assert d.waiting == 1 and sum(len(t.got) for t in ts) == 1
    first = next(t for t in ts if t.got)
    first.finish.release()
    assert _until(lambda: first.got == [1, 2])
    first.finish.release()
    d.stop()


def test_a_task_running_longer_than_long_does_not_count_as_keeping_python_busy() -> None:
    d = Dispatcher(8, stall=0.01, eager=1, saturation=0.0, long=0.2)
    ts = [_Thread(d, n) for n in "ab"]
    assert _parked(d, 2)
    _put(d, 1)
    assert _until(lambda: sum(len(t.got) for t in ts) == 1)
    t0 = time.monotonic()
    _put(d, 2)  # once the first task is older than ``long``, a thread is woken for it
    assert _until(lambda: sum(len(t.got) for t in ts) == 2)
    assert time.monotonic() - t0 >= 0.15
    for t in ts:
        t.finish.release()
    d.stop()


def test_while_saturated_a_thread_done_with_a_quick_task_rests() -> None:
    d = Dispatcher(8, stall=0.01, eager=1, saturation=float("inf"), long=30.0)
    a, b, c = _three_running(d)
    d.saturation = 0.0  # from now on Python counts as saturated
    _put(d, 4)
    _put(d, 5)
    by_item = {t.got[0]: t for t in (a, b, c)}
    by_item[1].finish.release()  # two others run: it parks, leaving 4 and 5 to them
    assert _parked(d, 1)
    by_item[2].finish.release()  # one other runs (``eager``): it parks too
    assert _parked(d, 2)
    time.sleep(0.1)
    assert d.waiting == 2
    by_item[3].finish.release()  # the last one running takes what waits, one after the other
    assert _until(lambda: by_item[3].got == [3, 4])
    by_item[3].finish.release()
    assert _until(lambda: by_item[3].got == [3, 4, 5])
    assert by_item[1].got == [1] and by_item[2].got == [2]
    by_item[3].finish.release()
    d.stop()


def test_tasks_that_block_in_their_own_code_keep_their_threads_when_saturated() -> None:
    """I/O-bound tasks wait outside Python: more threads help them however busy the process is."""
    d = Dispatcher(8, stall=0.01, eager=1, saturation=float("inf"), long=30.0)
    a, b, c = _three_running(d, code=1.0)  # each task's own code ran a second (blocked)
    d.saturation = 0.0
    _put(d, 4)
    _put(d, 5)
    by_item = {t.got[0]: t for t in (a, b, c)}
    by_item[1].finish.release()  # it takes 4 itself
    assert _until(lambda: by_item[1].got == [1, 4])
    by_item[2].finish.release()
    assert _until(lambda: by_item[2].got == [2, 5])
    for t in (a, b, c):
        t.finish.release()
        t.finish.release()
    d.stop()
