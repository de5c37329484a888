"""Lock contract tests: :class:`LockConformance`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from machinery.interfaces import Lock
from machinery.plugins import get_plugin_host, scheme_of
from machinery.testing._guard import SuiteBase
from machinery.testing._support import wait_until

if TYPE_CHECKING:
    from machinery.config import Config

__all__ = ["LockConformance"]


class LockConformance(SuiteBase):
    """The lock contract (used by the periodic scheduler). Subclass it in your plugin's tests.

    Needs the ``url`` fixture; the lock class is resolved from ``lock_url`` through the plugin
    host. Each :class:`~machinery.Lock` instance is one owner.
    """

    _machinery_suite = True

    #: The lock TTL used by the expiry tests, in seconds (whole seconds suit every store).
    ttl: ClassVar[float] = 1.0
    #: Seconds an expired lock may still be held after its TTL (stores with coarse expiry).
    expiry_tolerance: ClassVar[float] = 2.0
    #: Processes and iterations of the cross-process mutual exclusion test.
    processes: ClassVar[int] = 4
    iterations: ClassVar[int] = 5

    # -- fixtures -------------------------------------------------------------------------------

    @pytest.fixture
    def lock_class(self, lock_url: str) -> type[Lock]:
        """The lock class the plugin host resolves for ``lock_url``."""
        return get_plugin_host().lock_class(lock_url)

    @pytest.fixture
    def new_lock(self, lock_class: type[Lock], lock_url: str, machinery_config: Config) -> Iterator[Callable[[], Lock]]:
        """Make lock instances (each a distinct owner), closed at teardown."""
        made: list[Lock] = []

        def make() -> Lock:
            lk = lock_class(lock_url, machinery_config)
            made.append(lk)
            return lk

        yield make
        for lk in made:
            lk.close()

    @pytest.fixture
    def key(self, machinery_key_prefix: str) -> str:
        """A lock key unique to the test."""
        return f"{machinery_key_prefix}lock"

    # -- tests ----------------------------------------------------------------------------------

    def test_resolved_through_entry_point(self, lock_url: str, lock_class: type[Lock]) -> None:
        """The URL's scheme is registered through the plugin host and serves a Lock subclass."""
        assert scheme_of(lock_url) in get_plugin_host().schemes("lock")
        assert issubclass(lock_class, Lock)

    def test_acquire_excludes_other_owners(self, new_lock: Callable[[], Lock], key: str) -> None:
        """While one owner holds a key, another cannot take it; other keys are independent."""
        a, b = new_lock(), new_lock()
        assert a.owner != b.owner
        assert a.acquire(key, timedelta(seconds=30)) is True
        assert b.acquire(key, timedelta(seconds=30)) is False
        assert b.acquire(f"{key}-other", timedelta(seconds=30)) is True
        assert a.release(key) is True
        assert b.acquire(key, timedelta(seconds=30)) is True

    def test_release_only_by_holder(self, new_lock: Callable[[], Lock], key: str) -> None:
        """``release`` by a non-holder returns False and leaves the key held."""
        a, b, c = new_lock(), new_lock(), new_lock()
        assert a.acquire(key, timedelta(seconds=30))
        assert b.release(key) is False
        assert c.acquire(key, timedelta(seconds=30)) is False, "a non-holder's release freed the key"
        assert a.release(key) is True
        assert a.release(key) is False, "releasing twice must return False"
        assert b.release(f"{key}-never-taken") is False

    def test_expiry(self, new_lock: Callable[[], Lock], key: str) -> None:
        """A key whose holder's TTL ran out can be taken by another owner."""
        a, b = new_lock(), new_lock()
        assert a.acquire(key, timedelta(seconds=self.ttl))
        assert b.acquire(key, timedelta(seconds=self.ttl)) is False
        t0 = time.monotonic()
        wait_until(
            lambda: b.acquire(key, timedelta(seconds=30)),
            self.ttl + self.expiry_tolerance,
            interval=0.05,
            what=f"the lock to expire after its {self.ttl:g}s TTL",
        )
        assert time.monotonic() - t0 >= self.ttl * 0.8, "the lock expired well before its TTL"

    def test_release_after_expiry_keeps_new_holder(self, new_lock: Callable[[], Lock], key: str) -> None:
        """An owner whose TTL ran out cannot release the key another owner took since."""
        a, b, c = new_lock(), new_lock(), new_lock()
        assert a.acquire(key, timedelta(seconds=self.ttl))
        wait_until(
            lambda: b.acquire(key, timedelta(seconds=30)),
            self.ttl + self.expiry_tolerance,
            interval=0.05,
            what="the lock to expire",
        )
        assert a.release(key) is False, "the previous owner released the new holder's lock"
        assert c.acquire(key, timedelta(seconds=30)) is False
        assert b.release(key) is True

    def test_extend(self, lock_class: type[Lock], new_lock: Callable[[], Lock], key: str) -> None:
        """``extend`` (where implemented) keeps the holder's key beyond the original TTL."""
        if lock_class.extend is Lock.extend:
            pytest.skip(f"{lock_class.__name__} does not implement extend()")
        a, b = new_lock(), new_lock()
        assert a.acquire(key, timedelta(seconds=self.ttl))
        assert b.extend(key, timedelta(seconds=30)) is False, "a non-holder extended the key"
        assert a.extend(key, timedelta(seconds=30)) is True
        time.sleep(self.ttl + self.expiry_tolerance)
        assert b.acquire(key, timedelta(seconds=30)) is False, "the extended key expired with its old TTL"
        assert a.release(key) is True

    def test_mutual_exclusion_threads(self, new_lock: Callable[[], Lock], key: str) -> None:
        """Twenty owners racing for a free key: exactly one wins."""
        owners = [new_lock() for _ in range(20)]
        barrier = threading.Barrier(len(owners))
        wins: list[bool] = []
        errors: list[BaseException] = []

        def race(lk: Lock) -> None:
            try:
                barrier.wait(10)
                wins.append(lk.acquire(key, timedelta(seconds=30)))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(lk,)) for lk in owners]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, f"acquire raised: {errors[0]!r}"
        assert wins.count(True) == 1, f"{wins.count(True)} owners acquired the same key at once"

    @pytest.mark.machinery_subprocess
    def test_mutual_exclusion_across_processes(
        self,
        lock_url: str,
        key: str,
        transport_options: Mapping[str, Mapping[str, Any]],
        tmp_path: Path,
    ) -> None:
        """Several processes taking the same key in turn never hold it at the same time."""
        if self.process_local:
            pytest.skip(f"{type(self).__name__}.process_local: the lock cannot be shared with other processes")
        log = tmp_path / "holds.log"
        options = json.dumps({k: dict(v) for k, v in transport_options.items()})
        procs = [
            subprocess.Popen(
                [
                    sys.executable, "-m", "machinery.testing.app", "lock-contender",
                    "--url", lock_url, "--key", key, "--log", str(log),
                    "--iterations", str(self.iterations), "--options", options,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(self.processes)
        ]  # fmt: skip
        try:
            wait_until(
                lambda: (
                    len(list(tmp_path.glob("holds.log.ready.*"))) == self.processes
                    or any(p.poll() is not None for p in procs)
                ),
                30,
                what="the contender processes to start",
            )
            (tmp_path / "holds.log.go").touch()
            outputs = [p.communicate(timeout=60)[0].decode(errors="replace") for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        failed = [(p.returncode, out) for p, out in zip(procs, outputs) if p.returncode != 0]
        assert not failed, f"a contender failed (exit {failed[0][0]}):\n{failed[0][1][-3000:]}"
        lines = log.read_text().splitlines()
        assert len(lines) == 2 * self.processes * self.iterations, f"unexpected log:\n{lines}"
        holder = None
        for i, line in enumerate(lines):
            event, pid = line.split()
            if event == "enter":
                assert holder is None, f"process {pid} entered while {holder} held the lock (line {i + 1})"
                holder = pid
            else:
                assert event == "exit" and holder == pid, f"unexpected {line!r} (line {i + 1}) while {holder} held"
                holder = None
