"""Periodic tasks and workflows, sent exactly once per tick however many schedulers run.

``server.register_periodic_task(spec, name, signature)`` (and ``_group``, ``_chain``,
``_chord``) records a :class:`PeriodicEntry`; a :class:`Scheduler` (``machinery beat``, or
``machinery worker --beat``) sends it on its cron spec (see :mod:`machinery.cron`).

Exactly once per tick
    Ticks are computed from the schedule, not from the scheduler's clock, so every scheduler
    agrees on them. Before sending tick ``T`` of entry ``name`` a scheduler takes the lock key
    ``machinery:periodic:<name>:<T as Unix seconds>`` with :meth:`Lock.acquire
    <machinery.interfaces.Lock.acquire>`; only the scheduler that gets it sends, and the key is
    left to expire (never released) so a late scheduler cannot take it again. The key lives at
    least ``grace + 60 s`` (and up to the interval, capped at one hour), longer than any
    scheduler may still consider the tick due, which also covers clock skew of up to a minute.

Missed ticks
    A scheduler sends only the most recent due tick of each entry, and only while it is at most
    ``grace`` old (60 s by default). Older ticks (the scheduler was down, suspended, or blocked
    longer than the interval) are skipped and logged, never sent in a burst: on restart at most
    one tick per entry is sent late, and only when no other scheduler sent it already. Running
    two or more schedulers covers one that stalls. A send that fails (broker down) is logged
    and not retried, since a retry could duplicate a send that did get through.

Every tick sent is logged (logger ``machinery.schedule``, INFO) with the UUIDs it created, and
its messages carry the headers ``machinery_periodic_name`` and ``machinery_periodic_tick``
(RFC 3339, UTC), readable by tasks through :class:`~machinery.task.TaskContext`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Literal

from machinery.config import redact_url
from machinery.cron import Schedule, parse_cron
from machinery.signature import Signature, format_time
from machinery.workflow import Chain, Chord, Group

if TYPE_CHECKING:
    from datetime import tzinfo

    from machinery.producer import Producer
    from machinery.server import Server

__all__ = ["NAME_HEADER", "TICK_HEADER", "PeriodicEntry", "Scheduler", "lock_key"]

log = logging.getLogger("machinery.schedule")

#: Header carrying the periodic entry's name on every message of a tick.
NAME_HEADER = "machinery_periodic_name"
#: Header carrying the tick time (RFC 3339, UTC) on every message of a tick.
TICK_HEADER = "machinery_periodic_tick"
#: How late the most recent tick may still be sent.
DEFAULT_GRACE = timedelta(seconds=60)
_TTL_MARGIN = timedelta(seconds=60)
_MAX_TTL = timedelta(hours=1)
_MAX_SLEEP = 60.0  # re-read the wall clock at least this often (clock jumps, new entries)
_UTC = timezone.utc
# Lock instances a scheduler is running on in this process. Two schedulers sharing one lock
# instance share one owner token, and a lock may let its owner take a key again.
_running: set[int] = set()
_running_guard = threading.Lock()

Kind = Literal["task", "group", "chain", "chord"]


def lock_key(name: str, tick: datetime) -> str:
    """The lock key that makes tick ``tick`` of entry ``name`` fire once."""
    return f"machinery:periodic:{name}:{int(tick.timestamp())}"


def _walk(sig: Signature) -> Iterator[Signature]:
    yield sig
    for cb in (*sig.on_success, *sig.on_error):
        yield from _walk(cb)
    if sig.chord_callback is not None:
        yield from _walk(sig.chord_callback)


def _fresh(sig: Signature, *, member: bool = False) -> Signature:
    """A deep copy without UUIDs (so every send gets new ones); group fields cleared for members."""
    out = sig.copy()
    for s in _walk(out):
        s.uuid = ""
    if member:
        out.group_uuid = ""
        out.group_task_count = 0
        out.chord_callback = None
    return out


def _stamp(sigs: list[Signature], name: str, tick: datetime) -> None:
    when = format_time(tick.astimezone(_UTC))
    for top in sigs:
        for s in _walk(top):
            s.headers[NAME_HEADER] = name
            s.headers[TICK_HEADER] = when


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a periodic entry needs a non-empty name, got {name!r}")
    return name


def _check_type(what: str, value: object, cls: type) -> None:
    if not isinstance(value, cls):
        raise TypeError(f"{what} must be a {cls.__name__}, got {type(value).__name__}")


class PeriodicEntry:
    """One registered periodic task, group, chain or chord.

    Built with :meth:`task`, :meth:`group`, :meth:`chain` or :meth:`chord`, which parse the spec
    at once (a bad spec raises :class:`~machinery.cron.CronSpecError` quoting it) and keep a
    private copy of the signatures: changing them afterwards does not change the entry.

    :param name: unique name; it keys the per-tick lock.
    :param spec: the cron spec as given.
    :param schedule: the parsed spec.
    :param kind: ``task``, ``group``, ``chain`` or ``chord``.
    :param signatures: the template signatures (one for a task; the members of a group or chain;
        the members of a chord's group).
    :param callback: a chord's callback template.
    :param send_concurrency: publishing threads for groups and chords (see ``send_group``).
    """

    def __init__(
        self,
        name: str,
        spec: str,
        schedule: Schedule,
        kind: Kind,
        signatures: list[Signature],
        callback: Signature | None = None,
        send_concurrency: int = 0,
    ) -> None:
        self.name = _check_name(name)
        self.spec = spec
        self.schedule = schedule
        self.kind: Kind = kind
        self._templates = signatures
        self._callback = callback
        self.send_concurrency = send_concurrency

    # -- constructors -----------------------------------------------------------------------

    @classmethod
    def task(cls, spec: str, name: str, signature: Signature, *, timezone: str | tzinfo = "UTC") -> PeriodicEntry:
        """A task sent on ``spec`` (a fresh copy, with a new UUID, every tick).

        :param timezone: zone of the spec's fields unless it has a ``CRON_TZ=`` prefix.
        :raises CronSpecError: ``spec`` is not a valid cron spec.
        """
        _check_type("signature", signature, Signature)
        return cls(_check_name(name), spec, parse_cron(spec, timezone), "task", [_fresh(signature)])

    @classmethod
    def group(
        cls, spec: str, name: str, group: Group, send_concurrency: int = 0, *, timezone: str | tzinfo = "UTC"
    ) -> PeriodicEntry:
        """A group sent on ``spec`` (new group and task UUIDs every tick).

        :raises CronSpecError: ``spec`` is not a valid cron spec.
        """
        _check_type("group", group, Group)
        members = [_fresh(s, member=True) for s in group.tasks]
        return cls(_check_name(name), spec, parse_cron(spec, timezone), "group", members, None, send_concurrency)

    @classmethod
    def chain(cls, spec: str, name: str, chain: Chain, *, timezone: str | tzinfo = "UTC") -> PeriodicEntry:
        """A chain sent on ``spec`` (new task UUIDs every tick).

        :raises CronSpecError: ``spec`` is not a valid cron spec.
        """
        _check_type("chain", chain, Chain)
        links = [_fresh(s) for s in chain.tasks]
        for s in links[:-1]:
            s.on_success = []  # the chain link, rebuilt by Chain() every tick
        return cls(_check_name(name), spec, parse_cron(spec, timezone), "chain", links)

    @classmethod
    def chord(
        cls, spec: str, name: str, chord: Chord, send_concurrency: int = 0, *, timezone: str | tzinfo = "UTC"
    ) -> PeriodicEntry:
        """A chord sent on ``spec`` (new group, task and callback UUIDs every tick).

        :raises CronSpecError: ``spec`` is not a valid cron spec.
        """
        _check_type("chord", chord, Chord)
        members = [_fresh(s, member=True) for s in chord.group.tasks]
        callback = _fresh(chord.callback)
        return cls(_check_name(name), spec, parse_cron(spec, timezone), "chord", members, callback, send_concurrency)

    # -- per tick ---------------------------------------------------------------------------

    def build(self, tick: datetime) -> Signature | Group | Chain | Chord:
        """Fresh copies for tick ``tick`` (new UUIDs, tick headers set), ready to send."""
        sigs = [_fresh(s) for s in self._templates]
        if self.kind == "task":
            _stamp(sigs, self.name, tick)
            return sigs[0]
        if self.kind == "group":
            _stamp(sigs, self.name, tick)
            return Group(sigs)
        if self.kind == "chain":
            chain = Chain(sigs)
            _stamp(sigs[:1], self.name, tick)
            return chain
        assert self._callback is not None
        callback = _fresh(self._callback)
        _stamp([*sigs, callback], self.name, tick)
        return Chord(Group(sigs), callback)

    def send(self, producer: Producer, tick: datetime) -> str:
        """Send tick ``tick`` through ``producer``; returns a description with the UUIDs sent."""
        item = self.build(tick)
        if isinstance(item, Signature):
            producer.send(item)
            return f"task {item.uuid}"
        if isinstance(item, Group):
            producer.send_group(item, self.send_concurrency)
            return f"group {item.group_uuid} (tasks {', '.join(item.uuids())})"
        if isinstance(item, Chain):
            producer.send_chain(item)
            return f"chain (tasks {', '.join(s.uuid for s in item.tasks)})"
        producer.send_chord(item, self.send_concurrency)
        return (
            f"chord group {item.group.group_uuid} (tasks {', '.join(item.group.uuids())}) callback {item.callback.uuid}"
        )

    def __repr__(self) -> str:
        return f"PeriodicEntry({self.kind} {self.name!r} on {self.spec!r})"


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=_UTC) if dt.tzinfo is None else dt.astimezone(_UTC)


class Scheduler:
    """Sends the server's periodic entries on their schedules, once per tick across schedulers.

    Run it in a background thread (:meth:`start` / :meth:`stop`, as ``machinery worker --beat``
    does) or in the foreground (:meth:`run_forever`, as ``machinery beat`` does). It sleeps until
    the next tick and stops within moments of being asked. Entries registered on the server after
    it started are picked up within a minute.

    :param server: the server whose parts are used: its registry's periodic entries, its
        producer (which sends each tick) and its lock.
    :param grace: how late the most recent tick may still be sent (default 60 s); older ticks
        are skipped and logged.
    :param clock: returns the current time (for tests); default ``datetime.now(timezone.utc)``.
    """

    def __init__(
        self,
        server: Server,
        *,
        grace: timedelta = DEFAULT_GRACE,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if grace <= timedelta(0):
            raise ValueError(f"grace must be positive, got {grace}")
        self.server = server
        self.grace = grace
        self._clock = clock or (lambda: datetime.now(_UTC))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next: dict[str, datetime] = {}
        self._lock_id = 0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Scheduler:
        """Run :meth:`run_forever` in a daemon thread and return at once.

        The lock is created first, on the caller's thread, so a bad lock URL fails here.

        :raises RuntimeError: already running, or another scheduler runs on this server in this
            process.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("scheduler already running")
        self._claim()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run_claimed, args=(self._stop,), name="machinery-beat", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the scheduler to stop and wait (up to ``timeout`` s) for its thread to end.

        A send under way is finished first, so no tick is left half sent.
        """
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    @property
    def running(self) -> bool:
        """True while the background thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def run_forever(self, stop_event: threading.Event | None = None) -> None:
        """Send ticks until ``stop_event`` (or :meth:`stop`) is set; blocks.

        :param stop_event: an event to stop on (e.g. set by a signal handler); :meth:`stop` sets
            it too.
        """
        if stop_event is not None:
            self._stop = stop_event
        self._claim()
        self._run_claimed(self._stop)

    def _claim(self) -> None:
        # Creates the lock (a bad lock URL fails here) and makes sure this process runs one
        # scheduler per lock instance: schedulers sharing an instance share its owner token.
        lock_id = id(self.server.lock)
        with _running_guard:
            if lock_id in _running:
                raise RuntimeError(
                    "another scheduler is already running on this server in this process; "
                    "one per process is enough (schedulers in other processes are fine)"
                )
            _running.add(lock_id)
        self._lock_id = lock_id

    def _run_claimed(self, stop: threading.Event) -> None:
        try:
            self._loop(stop)
        finally:
            with _running_guard:
                _running.discard(self._lock_id)

    def _loop(self, stop: threading.Event) -> None:
        entries = self.server.registry.periodic_entries
        log.info(
            "scheduler started with %d periodic entr%s: %s",
            len(entries),
            "y" if len(entries) == 1 else "ies",
            ", ".join(f"{e.name} ({e.spec})" for e in entries) or "none yet",
        )
        self._warm_up()
        while not stop.is_set():
            try:
                wait = self.run_pending()
            except Exception:  # the scheduler must outlive one bad pass
                log.exception("scheduler pass failed; retrying in 1 s")
                wait = 1.0
            stop.wait(min(wait, _MAX_SLEEP))
        log.info("scheduler stopped")

    def _warm_up(self) -> None:
        # Connect to the lock server now rather than at the first tick, so the first tick is not
        # late by a client's set-up (seconds for some) and then skipped by every scheduler at once.
        # Releasing a key nobody holds is a no-op for every lock.
        try:
            self.server.lock.release(f"machinery:periodic:warm-up:{self.server.lock.owner}")
        except Exception as exc:  # noqa: BLE001 - the first tick will try (and log) again
            log.warning("lock %s not reachable yet: %s", redact_url(self.server.lock.url), exc)

    # -- one pass -------------------------------------------------------------------------------

    def run_pending(self, now: datetime | None = None) -> float:
        """Send every entry's due tick (at most one per entry) and return the seconds until the
        next tick of any entry.

        :param now: the current time (default: the clock).
        """
        now = _utc(now if now is not None else self._clock())
        soonest: datetime | None = None
        for entry in self.server.registry.periodic_entries:
            t = self._next.get(entry.name)
            if t is None:  # first look: only the most recent tick, if within the grace period
                t = _utc(entry.schedule.next(now - self.grace - timedelta(microseconds=1)))
                while (nxt := _utc(entry.schedule.next(t))) <= now:
                    t = nxt
            t = self._due(entry, t, now)
            self._next[entry.name] = t
            soonest = t if soonest is None else min(soonest, t)
        if soonest is None:
            return _MAX_SLEEP
        return max(0.0, (soonest - now).total_seconds())

    def _due(self, entry: PeriodicEntry, t: datetime, now: datetime) -> datetime:
        """Handle the ticks of ``entry`` from ``t`` up to ``now``; returns the next tick to wait for."""
        if t > now:
            return t
        first_missed: datetime | None = None
        missed = 0
        if now - t > 2 * self.grace + timedelta(seconds=1):  # far behind: jump, do not walk
            first_missed = t
            missed = -1  # unknown count
            t = _utc(entry.schedule.next(now - self.grace - timedelta(microseconds=1)))
        while t <= now:
            nxt = _utc(entry.schedule.next(t))
            if nxt <= now or now - t > self.grace:
                if first_missed is None:
                    first_missed = t
                if missed >= 0:
                    missed += 1
            else:
                self._fire(entry, t, nxt)
            t = nxt
        if first_missed is not None:
            count = "some" if missed < 0 else str(missed)
            log.warning(
                "periodic %r: skipped %s tick(s) from %s: this scheduler was late and sends only the most recent"
                " tick, within %gs of it (another scheduler may have sent them)",
                entry.name,
                count,
                format_time(first_missed),
                self.grace.total_seconds(),
            )
        return t

    def _ttl(self, tick: datetime, nxt: datetime) -> timedelta:
        return max(self.grace + _TTL_MARGIN, min(nxt - tick, _MAX_TTL))

    def _fire(self, entry: PeriodicEntry, tick: datetime, nxt: datetime) -> bool:
        """Take tick ``tick``'s lock and send it; True when this scheduler sent it."""
        key = lock_key(entry.name, tick)
        when = format_time(tick)
        try:
            won = self.server.lock.acquire(key, self._ttl(tick, nxt))
        except Exception as exc:  # noqa: BLE001 - logged; without the lock the tick cannot be sent once
            log.error("periodic %r: tick %s not sent: cannot take lock %r: %s", entry.name, when, key, exc)
            return False
        if not won:
            log.debug("periodic %r: tick %s already taken by another scheduler", entry.name, when)
            return False
        try:
            sent = entry.send(self.server.producer, tick)
        except Exception as exc:  # logged, not retried: a retry could send the tick twice
            log.error("periodic %r: tick %s not sent: %s", entry.name, when, exc, exc_info=True)
            return False
        log.info("periodic %r: tick %s sent %s", entry.name, when, sent)
        return True
