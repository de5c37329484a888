"""How the threads of a :class:`~machinery.worker.Worker` share its deliveries: as few of them
runnable as the work needs.

Python runs one thread at a time (the GIL). A pool that wakes a different thread for every
delivery makes each short task pay for a wake-up, and with many threads (``-c 64``) dozens of
them runnable at once hand the GIL to one another at every blocking call: on a 2-core machine
a no-op task's CPU went from ~100 µs to ~300 µs and the drain from ~9,000/s to ~3,000/s between
``-c 8`` and ``-c 64``. Threads are only worth waking when the running ones are blocked (I/O,
``sleep``, a child process of the processes pool) or slow.

So the :class:`Dispatcher` (Go's scheduler in small, the GIL standing for its one processor):

- a task thread that finishes a task takes the next delivery itself, without a hand-off;
- an idle thread is parked on a lock of its own, in a stack: the most recently idle one (warm
  caches) is woken first, and one wake-up wakes one thread;
- while fewer than :data:`EAGER` (2) threads run, a waiting delivery wakes a parked one at once
  (one runs tasks while the other waits for a round trip, the Redis batcher's pipeline say);
- beyond that, a delivery waiting while a thread is *fresh* (its task started less than :attr:`stall`
  seconds ago, or it was just woken) is left for that thread, which will be done soon; when
  every running thread has been in its task longer (blocked, sleeping, long), idle threads are
  woken, as many as there are such threads (so an I/O-bound load doubles its runnable threads
  every :attr:`stall` seconds up to the concurrency), by the consumer when it hands a delivery
  in, else by a monitor thread that looks again when the freshest task goes stale;
- a thread whose task took longer than :attr:`stall` (I/O-bound work: a 10 ms call) and that
  finds more deliveries waiting after taking its next one wakes one parked thread for them: the
  fresh threads will take long too, so the waiting deliveries are not left to them alone (the
  number of running threads then grows to what the load keeps busy);
- the consumer thread (the only one that takes messages from the broker) is woken to refill
  only when nothing is waiting or half of the slots are free, not at every task;
- while Python is saturated (the process used :data:`BUSY` cores of CPU or more over the last
  10 ms) and the tasks' own code is quick (:func:`task_code_ran`: its moving average is under
  :attr:`stall`), a stall wakes no thread beyond ``eager`` running ones (not counting those in a
  task older than :data:`LONG`), and a thread that finishes a task while ``eager`` others run
  parks instead of taking the next. Without this, a quick task waiting for the GIL behind dozens
  of runnable threads looked stalled, which woke more threads, which made every task wait
  longer: at ``-c 64`` all 64 threads ran, the CPU per task tripled and the drain fell to a
  third, and a worker stayed in that state once in it. Tasks whose own code blocks (I/O,
  ``sleep``) are not held back: their threads wait outside Python.

With ``stall = 0`` (the processes pool, whose tasks always block on a child) every waiting
delivery wakes an idle thread at once, as before. The concurrency is never exceeded: the consumer
takes a message only while fewer than ``concurrency`` are waiting or running
(:meth:`Dispatcher.reserve`), plus up to ``prefetch`` more *read ahead* while the tasks are quick
(their recent run times average under :data:`QUICK`): a thread that finishes a task then finds
the next one waiting instead of waiting for the consumer's round trip to the broker (Go Machinery
reads ahead too: a channel of ``concurrency`` messages). Long tasks never read ahead, so a message
is not kept waiting behind one while another worker is idle; when the worker stops, the messages
read ahead and not started are handed back (:meth:`Dispatcher.stop`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from typing import Any

__all__ = ["BUSY", "EAGER", "LONG", "QUICK", "STALL", "Dispatcher", "Seat", "task_code_ran"]

#: Seconds a running task may take before idle threads are woken for the deliveries waiting.
STALL = 0.001
#: Threads woken for waiting deliveries without waiting for a stall: one runs tasks while the
#: other waits for a round trip (the Redis batcher's pipeline, a result store): measured on a
#: 2-core machine, 1 left the Redis drain at ~5,400/s (every write waited for), 2 gave
#: ~9,000/s and more than 2 brought back the GIL contention at -c 64.
EAGER = 2
#: Seconds under which the average run time of the recent tasks lets the consumer read ahead.
QUICK = 0.01
#: Weight of the last task in that average (an exponentially weighted moving average).
_ALPHA = 0.2
#: Process CPU (cores, over the last :data:`_WINDOW`) at which Python is taken as saturated: more
#: runnable threads then only wait for the GIL; scaled by the cores on a free-threaded build.
BUSY = 0.8
_WINDOW = 0.01
#: Seconds after which a running task no longer counts as one of the threads keeping the GIL busy.
LONG = 0.1


_here = threading.local()


def task_code_ran(seconds: float) -> None:
    """Tell the dispatcher how long the task's own code ran on this thread (called by the worker
    as a task's function returns): tasks that block in their own code (I/O, ``sleep``) are
    worth more threads even when Python is busy; quick ones are not."""
    _here.seconds = seconds


def _saturation() -> float:
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return BUSY if gil else BUSY * (os.cpu_count() or 1)


def _signal(lock: Any) -> None:
    # The consumer's lock is a binary semaphore: a release that finds it released already (the
    # consumer's wait timed out meanwhile and it has not waited again) is one wake-up too many,
    # which its loop absorbs.
    try:
        lock.release()
    except RuntimeError:
        pass


class Seat:
    """One task thread's place in the :class:`Dispatcher`: the lock it parks on and the
    delivery handed to it."""

    __slots__ = ("item", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()  # held at rest: acquiring it again parks the thread
        self.item: Any = None


class Dispatcher:
    """Deliveries waiting for a task thread, the parked threads, and the slot count.

    :param concurrency: most deliveries waiting or running at once.
    :param stall: seconds after which a running task no longer counts on to take the next
        delivery soon (0: wake a parked thread for every waiting delivery).
    :param eager: with ``stall``, threads woken at once for waiting deliveries while fewer are
        running.
    :param prefetch: deliveries taken beyond ``concurrency`` while the tasks are quick.
    :param saturation: process CPU, in cores, at or above which Python counts as saturated
        (default :data:`BUSY`, times the cores on a free-threaded build); a public attribute.
    :param long: seconds after which a running task no longer counts as keeping Python busy.
    """

    def __init__(
        self,
        concurrency: int,
        stall: float = STALL,
        eager: int = EAGER,
        prefetch: int = 0,
        saturation: float | None = None,
        long: float = LONG,
    ) -> None:
        self.concurrency = concurrency
        self.prefetch = prefetch
        #: the most deliveries held now: ``concurrency``, plus ``prefetch`` while tasks are quick
        self._limit = concurrency
        #: moving average of the run times of the tasks finished (seconds; None before the first)
        self._avg: float | None = None
        self.stall = stall
        self._lock = threading.Lock()
        self._ready: deque[Any] = deque()
        #: deliveries reserved by the consumer and not finished (waiting, handed or running)
        self._held = 0
        #: of those, slots the consumer reserved and has not handed a delivery for yet
        self._reserved = 0
        self._idle: list[Seat] = []  # a stack: the last parked is the first woken
        self._busy: dict[Seat, float] = {}  # seat -> monotonic start of its current task
        self._fresh_until = 0.0  # no busy task started later than this minus ``stall``
        self.eager = eager
        self._stopping = False
        self._consumer = threading.Lock()
        self._consumer.acquire()
        self._consumer_waiting = False
        #: half the slots free (at least one) before a waiting consumer is woken
        self._refill = max(1, concurrency // 2)
        self._monitor: threading.Thread | None = None
        self._watch = threading.Event()
        self._watching = False
        self._closed = False
        #: process CPU over the last window, in cores, and where that window began
        self._load = 0.0
        self._cpu_at = time.monotonic()
        self._cpu = time.process_time()
        #: process CPU (cores) at or above which quick tasks get no more threads
        self.saturation = _saturation() if saturation is None else saturation
        self.long = long
        #: moving average of the seconds the tasks' own code ran (:func:`task_code_ran`)
        self._code = 0.0

    # -- consumer side ---------------------------------------------------------------------------

    def reserve(self, stop: threading.Event) -> bool:
        """Wait for a free slot and take it; False once ``stop`` is set (checked every 0.1 s)."""
        while not stop.is_set():
            with self._lock:
                if self._held < self._limit:
                    self._held += 1
                    self._reserved += 1
                    return True
                self._consumer_waiting = True
            self._consumer.acquire(timeout=0.1)
            with self._lock:
                self._consumer_waiting = False
        return False

    def unreserve(self) -> None:
        """Give back a slot taken with :meth:`reserve` for which no delivery came."""
        with self._lock:
            self._held -= 1
            self._reserved -= 1

    def put(self, delivery: Any) -> None:
        """Hand in a delivery (its slot reserved): to a parked thread, or to wait for a running one."""
        with self._lock:
            self._reserved -= 1
            self._ready.append(delivery)
            woken = self._wake(time.monotonic())
        for seat in woken:
            seat.lock.release()

    @property
    def in_flight(self) -> int:
        """Deliveries handed in and not finished (waiting for a thread or running); a slot the
        consumer reserved while it waits for the broker is not one."""
        with self._lock:
            return self._held - self._reserved

    # -- task threads ----------------------------------------------------------------------------

    def take(self, seat: Seat, finished: bool) -> Any:
        """The next delivery for the thread of ``seat`` (which finished one if ``finished``),
        parking it until there is one; None when the worker stops and nothing is waiting."""
        lock = self._lock
        while True:
            with lock:
                now = time.monotonic()
                long = False
                if finished:
                    finished = False
                    self._held -= 1
                    started = self._busy.get(seat)
                    if started is not None:
                        ran = now - started
                        long = ran > self.stall
                        if self.prefetch:
                            self._ran(ran)
                    code = getattr(_here, "seconds", 0.0)
                    _here.seconds = 0.0
                    self._code += _ALPHA * (code - self._code)
                blocking = self._blocking
                wake_consumer = self._consumer_waiting and (
                    not self._ready or self._limit - self._held >= self._refill
                )
                if wake_consumer:
                    self._consumer_waiting = False
                woken: list[Seat] = []
                if (
                    self._ready
                    and not blocking
                    and len(self._busy) > self.eager
                    and self.stall > 0
                    and self._saturated(now)
                    and not self._stopping
                    and self._active(now, seat) >= self.eager
                ):
                    # Python is saturated: this thread rests and the others take what waits
                    # (more runnable threads would only hand the GIL to one another)
                    item = None
                    self._park(seat)
                    self._arm()
                elif self._ready:
                    self._busy[seat] = now
                    if now + self.stall > self._fresh_until:
                        self._fresh_until = now + self.stall
                    item = self._ready.popleft()
                    if not self._ready:
                        pass
                    elif long and self._idle and (blocking or not self._saturated(now)):
                        # its task took long (I/O-bound work): others will too, and the messages
                        # waiting are not left for fresh threads alone; one parked thread joins
                        woken = [self._hand(now)]
                    else:
                        woken = self._wake(now)
                else:
                    item = None
                    self._park(seat)
                    if self._stopping:
                        self._idle.remove(seat)
                        if wake_consumer:
                            _signal(self._consumer)
                        return None
            if wake_consumer:
                _signal(self._consumer)
            for other in woken:
                other.lock.release()
            if item is not None:
                return item
            seat.lock.acquire()  # parked: released with a delivery, or on stop
            if seat.item is not None:
                item, seat.item = seat.item, None
                return item

    @property
    def _blocking(self) -> bool:
        # The tasks block in their own code (I/O, sleep): their moving average is over ``stall``.
        return self._code > self.stall

    def _ran(self, seconds: float) -> None:
        # Under the lock: a task ran ``seconds``; read ahead only while the average is quick.
        avg = self._avg
        avg = seconds if avg is None else avg + _ALPHA * (seconds - avg)
        self._avg = avg
        self._limit = self.concurrency + (self.prefetch if avg < QUICK else 0)

    def release(self) -> None:
        """Free a slot whose delivery was settled outside a task thread (the hard time limit)."""
        with self._lock:
            self._held -= 1
            wake_consumer = self._consumer_waiting
            self._consumer_waiting = False
        if wake_consumer:
            _signal(self._consumer)

    def leave(self, seat: Seat) -> None:
        """The thread of ``seat`` ends without finishing its delivery (abandoned at the hard
        time limit: :meth:`release` frees its slot)."""
        with self._lock:
            self._busy.pop(seat, None)
            if seat in self._idle:
                self._idle.remove(seat)

    def stop(self) -> list[Any]:
        """Let every thread finish its task, then return None from :meth:`take`; returns the
        deliveries waiting for a thread (not started), which the caller gives back."""
        with self._lock:
            self._stopping = True
            self._closed = True
            idle, self._idle = self._idle, []
            waiting = list(self._ready)
            self._ready.clear()
            self._held -= len(waiting)
        for seat in idle:
            seat.lock.release()
        self._watch.set()
        return waiting

    @property
    def waiting(self) -> int:
        """Deliveries handed in and not yet taken by a thread."""
        return len(self._ready)

    # -- the rule ---------------------------------------------------------------------------------

    def _park(self, seat: Seat) -> None:
        # Under the lock: the thread has nothing to run.
        if self._busy.pop(seat, None) is not None and self.stall > 0:
            busy = self._busy
            self._fresh_until = max(busy.values()) + self.stall if busy else 0.0
        self._idle.append(seat)

    def _wake(self, now: float) -> list[Seat]:
        # Under the lock: the parked threads to wake for the waiting deliveries (each handed
        # its delivery here), and the monitor armed when the rule says "not yet".
        ready, idle = self._ready, self._idle
        if not ready or not idle:
            return []
        if self.stall > 0:
            room = self.eager - len(self._busy)
            if room > 0:  # up to ``eager`` threads run without waiting for a stall
                n = min(len(ready), len(idle), room)
            elif now < self._fresh_until:  # a running thread will be free soon
                self._arm()
                return []
            elif not self._blocking and self._saturated(now):
                # the running threads keep Python busy: more would wait for the GIL; those in
                # long tasks (blocked, sleeping) do not count
                n = min(len(ready), len(idle), self.eager - self._active(now))
                if n <= 0:
                    self._fresh_until = now + _WINDOW
                    self._arm()
                    return []
            else:
                n = min(len(ready), len(idle), max(1, len(self._busy)))
        else:
            n = min(len(ready), len(idle))
        woken = [self._hand(now) for _ in range(n)]
        if self.stall > 0:
            self._fresh_until = now + self.stall
            if ready and idle:
                self._arm()
        return woken

    def _saturated(self, now: float) -> bool:
        # Under the lock: whether the process used more CPU than :data:`BUSY` cores over the last
        # window (sampled at most every :data:`_WINDOW` seconds).
        if now - self._cpu_at >= _WINDOW:
            cpu = time.process_time()
            self._load = (cpu - self._cpu) / (now - self._cpu_at)
            self._cpu_at, self._cpu = now, cpu
        return self._load >= self.saturation

    def _active(self, now: float, but: Seat | None = None) -> int:
        # Under the lock: the running threads (but one) whose task started less than ``long`` ago.
        long = self.long
        return sum(1 for seat, started in self._busy.items() if seat is not but and now - started < long)

    def _hand(self, now: float) -> Seat:
        # Under the lock: the next waiting delivery to the last parked thread.
        seat = self._idle.pop()
        seat.item = self._ready.popleft()
        self._busy[seat] = now
        return seat

    def _arm(self) -> None:
        # Under the lock: have the monitor look again when the freshest task goes stale.
        if self._watching or self._closed:
            return
        self._watching = True
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch_loop, name="machinery-dispatch", daemon=True)
            self._monitor.start()
        else:
            self._watch.set()

    def _watch_loop(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                if not self._watching:
                    delay = None
                else:
                    now = time.monotonic()
                    if now < self._fresh_until:
                        delay = self._fresh_until - now
                    else:
                        self._watching = False
                        woken = self._wake(now)
                        delay = 0.0
            if delay is None:
                self._watch.wait()
                self._watch.clear()
            elif delay > 0:
                time.sleep(delay)
            else:
                for seat in woken:
                    seat.lock.release()
