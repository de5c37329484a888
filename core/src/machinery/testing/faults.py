"""The fault suite: :class:`FaultConformance`, run by every broker plugin against its real server.

Three scenarios, each measured and written down as figures:

* **SIGKILL under load** (:meth:`FaultConformance.test_sigkill_workers_under_load`): a few
  hundred tasks, two ``machinery worker`` subprocesses (the real command line), one of them
  SIGKILLed every ``kill_every`` seconds and started again. Every execution is counted in an
  append-only file (``O_APPEND`` lines written by the task itself, independent of the broker and
  the backend): sent, completed at least once, lost, duplicated (completed more than once), and
  the recovery time (from a kill to the moment a task the dead worker was running starts again
  elsewhere).
* **Broker restart** (:meth:`FaultConformance.test_broker_restart`): a private server of the
  plugin's own (the ``restartable_server`` fixture, a :class:`RestartableServer`) is stopped with
  SIGTERM and later with SIGKILL while a producer sends; the producer must get a clear
  :class:`~machinery.errors.MachineryError` during the outage, the worker must reconnect, and
  nothing accepted may be lost when the server persists what it accepted.
* **Malformed messages** (:meth:`FaultConformance.test_fuzz_malformed_messages`): a seeded
  generator (:func:`malformed_bodies`) makes ``fuzz_bodies`` (10,000) bodies: garbage bytes,
  truncated JSON, wrong types per field, huge values, unknown task names, bad argument types,
  lone surrogates, empty UUIDs, nested junk. They are published raw onto the worker's queue;
  every one must be dead-lettered or refused with a reason, the worker must stay alive (and log
  no unexpected error), and a control task sent afterwards must still be served.

Use it like the conformance suite::

    class TestRedisFaults(FaultConformance):
        fault_label = "redis"

        @pytest.fixture
        def broker_oracle(self, ...): ...          # as for BrokerConformance

        @pytest.fixture
        def restartable_server(self, tmp_path):     # optional: a private server
            ...

Figures: when ``MACHINERY_FAULTS_FIGURES`` names a directory, each scenario writes one JSON file
there; ``python -m machinery.testing.faults report DIR --write docs/reliability.md`` merges them
into ``docs/reliability-figures.json`` and regenerates the table of ``docs/reliability.md``
(``nox -s faults`` does both).
"""

from __future__ import annotations

import re
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest

from machinery.errors import MachineryError
from machinery.signature import Arg, Signature
from machinery.testing._faults_fuzz import FuzzBody, _cycles, _expected, malformed_bodies
from machinery.testing._faults_support import (
    FIGURES_ENV,
    CliWorker,
    RestartableServer,
    _Runs,
    _work,
    main,
    render_table,
    write_figures,
)
from machinery.testing._guard import SuiteBase
from machinery.testing._support import wait_until

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.interfaces import Broker
    from machinery.server import Server
    from machinery.testing.oracle import BrokerOracle

__all__ = [
    "FIGURES_ENV",
    "CliWorker",
    "FaultConformance",
    "FuzzBody",
    "RestartableServer",
    "main",
    "malformed_bodies",
    "render_table",
]

#: Worker log lines that show a message handled by accident, not on purpose: an exception that
#: escaped to the worker's catch-all, or a redelivery although the backend is healthy (a message
#: that can never be stored comes back for ever).
_UNEXPECTED = re.compile(r"unexpected error|giving the message back for redelivery|could not settle", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------


class FaultConformance(SuiteBase):
    """Faults every broker must survive: worker SIGKILLs, a broker restart, malformed messages.

    Needs the fixtures ``url`` and ``broker_oracle`` (as :class:`~machinery.testing.BrokerConformance`),
    and optionally ``restartable_server``. Set :attr:`fault_label` to name the configuration in
    the figures.
    """

    _machinery_suite = True

    #: The configuration's name in the figures table (e.g. ``"redis (shared, no persistence)"``).
    fault_label: ClassVar[str] = ""
    #: Tasks sent in the SIGKILL scenario, and how long each one works.
    sigkill_tasks: ClassVar[int] = 400
    sigkill_task_seconds: ClassVar[float] = 0.1
    #: Seconds between two SIGKILLs, and how many at most.
    kill_every: ClassVar[float] = 2.5
    max_kills: ClassVar[int] = 5
    #: The redelivery timeout in effect with your ``transport_options`` (None: the broker class's).
    redelivery_timeout: ClassVar[float | None] = None
    #: Malformed bodies published in the fuzz scenario, their seed, and bodies per publish batch.
    fuzz_bodies: ClassVar[int] = 10_000
    fuzz_seed: ClassVar[int] = 17
    fuzz_batch: ClassVar[int] = 200
    #: Seconds the worker gets to work through the fuzz bodies.
    fuzz_timeout: ClassVar[float] = 120.0
    #: Seconds the oracle may take per count (slow counting oracles poll less often).
    oracle_interval: ClassVar[float] = 0.5

    # -- fixtures -------------------------------------------------------------------------------

    @pytest.fixture
    def fault_workers(self, machinery_config: Config, tmp_path: Path) -> Iterator[Callable[..., CliWorker]]:
        """Start ``machinery worker`` subprocesses: ``fault_workers(concurrency=2, config=None, ready=True)``."""
        started: list[CliWorker] = []

        def start(concurrency: int = 2, config: Config | None = None, ready: bool = True) -> CliWorker:
            w = CliWorker(config or machinery_config, tmp_path / f"cli-worker-{len(started)}.log", concurrency)
            started.append(w)
            if ready:
                w.wait_ready()
            return w

        yield start
        for w in started:
            try:
                w.stop()
            finally:
                out = w.output()
                if out:
                    tail = "\n".join(line[:300] for line in out[-20000:].splitlines()[-40:])
                    print(f"----- {w.name} -----\n{tail}")

    @pytest.fixture
    def restartable_server(self) -> RestartableServer | None:
        """A private, restartable server of the plugin (override it); None skips the restart scenario."""
        return None

    @pytest.fixture
    def fault_broker(self, machinery_server: Server) -> Broker:
        """The producer's broker."""
        return machinery_server.broker

    # -- helpers --------------------------------------------------------------------------------

    def label(self, broker_url: str) -> str:
        """The configuration's name in the figures."""
        if self.fault_label:
            return self.fault_label
        from machinery.plugins import scheme_of

        return scheme_of(broker_url)

    def effective_redelivery_timeout(self, broker: Broker) -> float:
        """How long a dead worker's messages may take to come back."""
        return float(self.redelivery_timeout or type(broker).redelivery_timeout)

    def push_raw(self, broker: Broker, queue: str, bodies: Sequence[bytes]) -> list[str | None]:
        """Publish ``bodies`` unchanged onto ``queue`` through the broker's own publish path, in
        batches; a batch the broker refuses is retried one body at a time.

        :returns: per body, None when published, else the reason the broker refused it.
        """
        out: list[str | None] = []
        for start in range(0, len(bodies), self.fuzz_batch):
            chunk = bodies[start : start + self.fuzz_batch]
            items = [
                (b, Signature("fuzz", routing_key=queue, uuid=f"fuzz_raw_{start + k}")) for k, b in enumerate(chunk)
            ]
            try:
                broker.publish_many(items)
                out.extend([None] * len(chunk))
                continue
            except MachineryError:
                pass
            for body, sig in items:
                try:
                    broker.publish(body, sig)
                    out.append(None)
                except MachineryError as exc:
                    assert str(exc), f"{type(exc).__name__} without a message"
                    out.append(f"{type(exc).__name__}: {exc}")
        return out

    def send_work(self, server: Server, path: Path, indices: Sequence[int], seconds: float) -> list[str]:
        """Send ``fault_work`` tasks; their UUIDs."""
        uuids = []
        for i in indices:
            uuids.append(server.send_task(_work(path, i, seconds)).task_uuid)
        return uuids

    # -- (a) SIGKILL under load -----------------------------------------------------------------

    @pytest.mark.slow
    @pytest.mark.machinery_subprocess
    def test_sigkill_workers_under_load(
        self,
        fault_workers: Callable[..., CliWorker],
        machinery_server: Server,
        broker_url: str,
        tmp_path: Path,
    ) -> None:
        """Two workers, one SIGKILLed every few seconds and restarted: every task completes at least
        once (none lost where the broker redelivers unacknowledged messages); duplicates and the
        recovery time are measured."""
        if self.process_local:
            pytest.skip("the transport lives inside one process: nothing to SIGKILL")
        broker = machinery_server.broker
        record = tmp_path / "runs.log"
        n = self.sigkill_tasks
        workers = [fault_workers(), fault_workers()]
        uuids = self.send_work(machinery_server, record, range(n), self.sigkill_task_seconds)
        sent_at = time.monotonic()
        kills: list[tuple[int, float]] = []  # (pid, wall time of the kill)
        redelivery = self.effective_redelivery_timeout(broker)
        deadline = sent_at + n * self.sigkill_task_seconds + 60 + 2 * redelivery
        next_kill = time.monotonic() + self.kill_every
        while time.monotonic() < deadline:
            done = _Runs.read(record).completed()
            if len(done) == n:
                break
            if len(kills) < self.max_kills and time.monotonic() >= next_kill and len(done) < n * 0.9:
                victim = len(kills) % 2
                pid = workers[victim].pid
                workers[victim].kill()
                kills.append((pid, time.time()))
                workers[victim] = fault_workers(ready=False)
                next_kill = time.monotonic() + self.kill_every
            time.sleep(0.1)
        runs = _Runs.read(record)
        completed = runs.completed()
        lost = sorted(set(range(n)) - completed)
        duplicated = sorted(i for i, d in runs.dones.items() if len(d) > 1)
        recoveries = self._recoveries(runs, kills)
        states = Counter(
            (s.state if s is not None else "MISSING") for s in (machinery_server.backend.get_state(u) for u in uuids)
        )
        alive = [w.alive() for w in workers]
        write_figures(
            self.label(broker_url),
            "sigkill",
            {
                "sent": n,
                "completed": len(completed),
                "lost": len(lost),
                "duplicated": len(duplicated),
                "recovery_s": max(recoveries) if recoveries else None,
                "notes": (
                    f"{len(kills)} SIGKILLs every {self.kill_every:g}s, 2 workers x 2 threads, "
                    f"{self.sigkill_task_seconds:g}s tasks; redelivery timeout {redelivery:g}s; "
                    f"recovery median {statistics.median(recoveries):.1f}s"
                    if recoveries
                    else f"{len(kills)} SIGKILLs every {self.kill_every:g}s; no task was in flight at a kill"
                ),
            },
        )
        assert kills, "no worker was killed (the tasks finished before the first kill: send more)"
        assert all(alive), "a worker that was not killed died"
        if type(broker).redelivers_unacked:
            assert not lost, f"{len(lost)} of {n} tasks never completed: {lost[:20]}"
            assert states.get("SUCCESS", 0) == n, f"final states: {dict(states)}"

    @staticmethod
    def _recoveries(runs: _Runs, kills: Sequence[tuple[int, float]]) -> list[float]:
        """Per task a killed worker was running: seconds from the kill to its next start elsewhere."""
        out = []
        for pid, at in kills:
            for idx, starts in runs.starts.items():
                mine = [t for p, t in starts if p == pid and t <= at]
                finished = any(p == pid for p, _ in runs.dones.get(idx, ()))
                if not mine or finished:
                    continue
                later = [t for p, t in starts if p != pid and t > at]
                if later:
                    out.append(min(later) - at)
        return out

    # -- (b) broker restart ---------------------------------------------------------------------

    @pytest.mark.slow
    @pytest.mark.machinery_subprocess
    def test_broker_restart(
        self,
        restartable_server: RestartableServer | None,
        fault_workers: Callable[..., CliWorker],
        machinery_config: Config,
        tmp_path: Path,
    ) -> None:
        """The broker is stopped (SIGTERM, later SIGKILL) while a producer sends: the producer gets
        a clear MachineryError, the worker reconnects, nothing accepted is lost where the server
        persists what it accepted."""
        from machinery.server import Server

        srv = restartable_server
        if srv is None:
            pytest.skip(f"{type(self).__name__} has no private server to restart (restartable_server fixture)")
        cfg = machinery_config.replace(
            broker=srv.broker_url, result_backend=srv.backend_url or machinery_config.result_backend
        )
        record = tmp_path / "runs.log"
        worker = fault_workers(config=cfg)
        producer = Server(cfg)
        accepted: list[int] = []
        accepted_at: dict[int, float] = {}
        refused: list[tuple[int, BaseException, str, float]] = []
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set():
                try:
                    producer.send_task(_work(record, i, 0.005))
                    accepted.append(i)
                    accepted_at[i] = time.time()
                except Exception as exc:  # noqa: BLE001 - every refusal is checked below
                    refused.append((i, exc, str(exc), time.time()))
                    time.sleep(0.05)
                i += 1
                time.sleep(0.01)

        t = threading.Thread(target=produce, daemon=True)
        outages: list[tuple[str, float, float]] = []
        try:
            t.start()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                time.sleep(2.0)
                down = time.time()
                srv.stop(sig)
                time.sleep(1.5)
                srv.start()
                outages.append((signal.Signals(sig).name, down, time.time()))
            # go on until a few tasks were accepted after the last restart (or 30 s passed)
            back = outages[-1][2]
            until = time.monotonic() + 30
            time.sleep(2.0)
            while time.monotonic() < until and sum(1 for a in list(accepted_at.values()) if a > back) < 5:
                time.sleep(0.2)
        finally:
            stop.set()
            t.join(60)
        last_up = outages[-1][2]
        want = set(accepted)
        try:
            wait_until(
                lambda: want <= _Runs.read(record).completed(),
                60 + 2 * self.effective_redelivery_timeout(producer.broker),
                what="the accepted tasks to run",
            )
        except AssertionError:
            pass
        runs = _Runs.read(record)
        completed = runs.completed() & want
        lost = sorted(want - completed)
        after = [i for i in accepted if accepted_at[i] > last_up]
        after_restart_done = bool(after) and all(i in completed for i in after)
        recovery = min((t for i in runs.dones for _, t in runs.dones[i] if t > last_up), default=None)
        producer.close()
        kinds = Counter(type(exc).__name__ for _, exc, _, _ in refused)
        write_figures(
            f"{self.label(srv.broker_url).partition(' (')[0]} ({srv.description})",
            "restart",
            {
                "sent": len(accepted) + len(refused),
                "completed": len(completed),
                "lost": len(lost),
                "duplicated": sum(1 for i in completed if len(runs.dones[i]) > 1),
                "recovery_s": (recovery - last_up) if recovery else None,
                "notes": (
                    f"accepted {len(accepted)}, refused during the outages {len(refused)} "
                    f"({', '.join(f'{k} x{v}' for k, v in kinds.items()) or 'none'}); "
                    "SIGTERM then SIGKILL, 1.5 s down each"
                    + ("" if srv.persistent else "; the server keeps nothing across a restart: loss expected")
                ),
            },
        )
        assert worker.alive(), "the worker died when the broker went away"
        for _, exc, message, _ in refused:
            assert isinstance(exc, MachineryError), (
                f"the producer got {type(exc).__name__}: {message} (not a MachineryError)"
            )
            assert message, f"{type(exc).__name__} without a message"
        assert after, "the producer could not send for 30 s after the broker came back"
        assert after_restart_done, (
            f"the worker did not carry on: {sum(1 for i in after if i not in completed)} of {len(after)} tasks "
            "accepted after the restart never ran"
        )
        if srv.persistent:
            assert not lost, f"{len(lost)} accepted tasks lost across the restarts: {lost[:20]}"

    # -- (c) malformed messages -----------------------------------------------------------------

    @pytest.mark.slow
    @pytest.mark.machinery_subprocess
    def test_fuzz_malformed_messages(
        self,
        fault_workers: Callable[..., CliWorker],
        machinery_server: Server,
        machinery_queue: str,
        broker_oracle: BrokerOracle,
        broker_url: str,
    ) -> None:
        """Thousands of malformed bodies: every one dead-lettered or refused with a reason, the
        worker alive and free of unexpected errors, and a control task served afterwards."""
        if self.process_local:
            pytest.skip("the transport lives inside one process: no worker process to fuzz")
        broker = machinery_server.broker
        bodies = malformed_bodies(self.fuzz_bodies, self.fuzz_seed)
        expected = [_expected(fb) for fb in bodies]
        worker = fault_workers(concurrency=4)
        t0 = time.monotonic()
        refusals = self.push_raw(broker, machinery_queue, [fb.body for fb in bodies])
        pushed = time.monotonic() - t0
        control = machinery_server.send_task(Signature("add", [Arg("int64", 2), Arg("int64", 3)]))
        deadline = time.monotonic() + self.fuzz_timeout
        try:
            served = control.get(timeout=self.fuzz_timeout) == 5
        except MachineryError:
            served = False
        accepted = [fb for fb, r in zip(bodies, refusals, strict=True) if r is None]
        requeued = sum(1 for fb, r in zip(bodies, refusals, strict=True) if r is None and _cycles(fb))

        def drained() -> bool:
            return broker_oracle.message_count(machinery_queue) <= requeued

        try:
            left = max(deadline - time.monotonic(), 1.0)
            wait_until(drained, left, interval=self.oracle_interval, what="the queue to drain")
            stuck = 0
        except AssertionError:
            stuck = broker_oracle.message_count(machinery_queue) - requeued
        elapsed = time.monotonic() - t0
        backend = machinery_server.backend
        must_run = [fb for fb, e, r in zip(bodies, expected, refusals, strict=True) if r is None and e == "run"]
        final = {"SUCCESS", "FAILURE"}
        missing = [fb.uuid for fb in must_run if (s := backend.get_state(fb.uuid)) is None or s.state not in final]
        empty_key = backend.get_state("")
        log = worker.output()
        dead = log.count("dropping malformed message")
        unexpected = [line for line in log.splitlines() if _UNEXPECTED.search(line)]
        kinds = Counter(fb.kind for fb in bodies)
        write_figures(
            self.label(broker_url),
            "fuzz",
            {
                "bad_inputs": len(bodies),
                "notes": (
                    f"{len(accepted)} published, {len(bodies) - len(accepted)} refused by the broker at publish; "
                    f"{dead} dead-lettered, {len(must_run)} ran to a final state (wrong values), "
                    f"{sum(1 for e in expected if e == 'unknown')} unknown task names; "
                    f"{len(unexpected)} unexpected errors; {elapsed:.0f}s (publish {pushed:.0f}s); "
                    f"seed {self.fuzz_seed}"
                ),
                "kinds": dict(kinds),
            },
        )
        must_die = sum(1 for e, r in zip(expected, refusals, strict=True) if r is None and e == "dead")
        problems = []
        if not worker.alive():
            problems.append("the worker died on malformed input")
        if unexpected:
            problems.append(
                f"{len(unexpected)} messages handled by accident, not on purpose (an escaped exception, or a "
                "redelivery although the backend is healthy; "
                f"{sum(1 for line in unexpected if 'surrogate' in line)} of them name a lone surrogate), e.g.:\n    "
                + "\n    ".join(line[:300] for line in unexpected[:4])
            )
        if not served:
            problems.append(
                f"the control task sent after the malformed ones was not served within {self.fuzz_timeout:g}s"
            )
        if stuck > 0:
            problems.append(f"{stuck} messages still in the queue after {self.fuzz_timeout:g}s (stuck or looping)")
        if dead < must_die:
            problems.append(f"{must_die} undecodable bodies, only {dead} dead-lettered")
        if missing:
            problems.append(f"{len(missing)} well-formed tasks never reached a final state: {missing[:10]}")
        if empty_key is not None:
            problems.append(
                f"a message without a UUID ran and stored its state under the empty key: {empty_key!r}"[:400]
            )
        assert not problems, "\n".join(problems)


if __name__ == "__main__":
    raise SystemExit(main())
