"""The conformance suite catches broken transports, and guards itself.

Deliberately broken transports (subclasses of the memory reference implementation) are
installed the way a third-party plugin is: a distribution with a ``machinery`` entry point,
found on ``sys.path`` by a fresh plugin host. The suite is then run against each of them with
``pytester`` and the specific contract tests that must catch the fault are asserted to fail,
while the same tests pass against the unbroken transport.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

import machinery.plugins
from machinery.testing import BrokerConformance, require_server

BROKEN_TRANSPORTS = '''
"""Broken transports for the suite's guard tests; each breaks one guarantee."""
import threading
import time
from datetime import timedelta

from machinery import hookimpl
from machinery.builtin.memory import MemoryBackend, MemoryBroker, MemoryLock


class AckEarlyBroker(MemoryBroker):
    """Forgets a message as soon as it is handed out (acks before the task runs)."""

    def consume(self, queue, *, prefetch, stop):
        for d in super().consume(queue, prefetch=prefetch, stop=stop):
            super().ack(d)
            yield d


class LoseNackedBroker(MemoryBroker):
    """Drops messages given back with nack(requeue=True)."""

    def nack(self, delivery, *, requeue=True, delay=0.0):
        super().nack(delivery, requeue=False)


class EarlyEtaBroker(MemoryBroker):
    """Claims native delay but delivers ETA tasks at once."""

    def publish(self, body, signature):
        eta, signature.eta = signature.eta, None
        try:
            super().publish(body, signature)
        finally:
            signature.eta = eta


class StuckLock(MemoryLock):
    """Never expires: the TTL is ignored."""

    def acquire(self, key, ttl):
        return super().acquire(key, timedelta(days=365))


class NoExclusionLock(MemoryLock):
    """Every owner gets every key."""

    def acquire(self, key, ttl):
        super().acquire(key, ttl)
        return True


class RacyChordBackend(MemoryBackend):
    """Reads, then writes the chord flag without holding the store's lock."""

    def _mark_chord_triggered(self, group_uuid):
        meta = self._load_group(group_uuid)
        if meta is None or meta.chord_triggered:
            return False
        time.sleep(0.005)
        meta.chord_triggered = True
        return True


class RacyRateBackend(MemoryBackend):
    """Reserves a rate-limit slot by read, pause, write, without a lock."""

    slots = {}

    def rate_limit_reserve(self, key, interval, max_wait):
        now = time.monotonic()
        tat = max(self.slots.get(key, now), now)
        if tat - now > max_wait:
            return False, tat - now
        time.sleep(0.005)
        self.slots[key] = tat + interval
        return True, tat - now


class EverlastingRevokeBackend(MemoryBackend):
    """Ignores the revocations' ttl: they never expire."""

    def revoke(self, task_uuids, *, terminate, ttl):
        super().revoke(task_uuids, terminate=terminate, ttl=None)


@hookimpl
def machinery_register_brokers(register):
    register("ackearly", AckEarlyBroker)
    register("losenack", LoseNackedBroker)
    register("earlyeta", EarlyEtaBroker)


@hookimpl
def machinery_register_backends(register):
    register("racychord", RacyChordBackend)
    register("racyrate", RacyRateBackend)
    register("everrevoke", EverlastingRevokeBackend)


@hookimpl
def machinery_register_locks(register):
    register("stucklock", StuckLock)
    register("nolock", NoExclusionLock)
'''

CONFTEST = """
import json

import pytest

from machinery.builtin.memory import _store as memory
from machinery.signature import encode_task_state
from machinery.state import TaskState
from machinery.testing import BackendOracle, BrokerOracle

pytest_plugins = ["machinery.testing.plugin"]


class Oracle(BrokerOracle):
    def message_count(self, queue):
        store = memory._brokers.get("guard")
        if store is None:
            return 0
        with store.cond:
            q = store.queues.get(queue)
            return (len(q.ready) if q else 0) + sum(1 for e in store.unacked.values() if e[0] == queue)


class BOracle(BackendOracle):
    def raw_state(self, task_uuid):
        store = memory._backends.get("guard")
        entry = store.records.get(task_uuid) if store else None
        if entry is None or not isinstance(entry[1], TaskState):
            return None
        return json.loads(encode_task_state(entry[1]))


@pytest.fixture
def broker_oracle():
    return Oracle()


@pytest.fixture
def backend_oracle():
    return BOracle()
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.Pytester]:
    """A pytester project where the broken transports are an installed plugin distribution."""
    pytester.makepyfile(broken_transports=BROKEN_TRANSPORTS)
    dist = pytester.path / "machinery_broken-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: machinery-broken\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[machinery]\nbroken = broken_transports\n")
    pytester.syspathinsert()
    pytester.makeconftest(CONFTEST)
    # A fresh plugin host for the inner run discovers the new entry point like any plugin's.
    monkeypatch.setattr(machinery.plugins, "_host", None)
    yield pytester


def suite_class(
    name: str,
    suite: str,
    url: str,
    *,
    process_local: bool = True,
    lock_url: str | None = None,
    body: str = "",
    **attrs: float,
) -> str:
    """Source of a conformance subclass ``name(suite)`` on ``url``, as a plugin's test module
    writes one: ``attrs`` become class attributes, ``body`` (methods) is appended."""
    lines = [f"class {name}({suite}):"]
    if process_local:
        lines.append("    process_local = True")
    lines += [f"    {attr} = {value!r}" for attr, value in attrs.items()]
    lines += ["    @pytest.fixture", f"    def url(self): return {url!r}"]
    if lock_url is not None:
        lines += ["    @pytest.fixture", f"    def lock_url(self): return {lock_url!r}"]
    if body:
        lines.append(textwrap.indent(textwrap.dedent(body).strip("\n"), "    "))
    return "\n".join(lines) + "\n"


def outcomes(pytester: pytest.Pytester, *classes: str, k: str) -> dict[str, set[str]]:
    """Run ``classes`` (see :func:`suite_class`) as a test module, selecting tests with ``-k k``;
    ``{"passed": {"Class::test"...}, "failed": ..., "skipped": ...}``."""
    header = (
        "import pytest\n"
        "from machinery.testing import BackendConformance, BrokerConformance, LockConformance, WorkflowConformance\n"
    )
    pytester.makepyfile(test_guarded="\n\n".join([header, *classes]))
    rec = pytester.inline_run("-p", "no:cacheprovider", "-k", k)
    passed, skipped, failed = rec.listoutcomes()

    def names(reports: list[object]) -> set[str]:
        return {str(getattr(r, "nodeid", "")).split("::", 1)[1] for r in reports}

    return {"passed": names(list(passed)), "skipped": names(list(skipped)), "failed": names(list(failed))}


# A broken broker must fail fast: the contract tests otherwise wait their full timeouts.
FAST_BROKER = {"delivery_timeout": 1.0, "oracle_timeout": 1.0, "eta_tolerance": 0.5}


def test_ack_before_run_is_caught(suite: pytest.Pytester) -> None:
    """A broker that acknowledges on delivery fails the at-least-once tests; memory passes them."""
    res = outcomes(
        suite,
        suite_class("TestBroken", "BrokerConformance", "ackearly://guard", **FAST_BROKER),
        suite_class("TestControl", "BrokerConformance", "memory://guard"),
        k="kept_until_ack or nack_requeue or nack_with_delay",
    )
    caught = {"test_message_kept_until_ack", "test_nack_requeue_redelivers", "test_nack_with_delay"}
    assert res["failed"] == {f"TestBroken::{t}" for t in caught}, res
    assert {f"TestControl::{t}" for t in caught} <= res["passed"], res


def test_lost_nack_is_caught(suite: pytest.Pytester) -> None:
    """A broker that drops requeued messages fails the nack and unknown-task tests."""
    res = outcomes(
        suite,
        suite_class("TestBroken", "BrokerConformance", "losenack://guard", **FAST_BROKER),
        k="nack_requeue or nack_with_delay or unknown_task_requeued",
    )
    assert res["failed"] == {
        "TestBroken::test_nack_requeue_redelivers",
        "TestBroken::test_nack_with_delay",
        "TestBroken::test_unknown_task_requeued",
    }, res


def test_early_eta_is_caught(suite: pytest.Pytester) -> None:
    """A broker claiming native delay but delivering ETA tasks at once fails the ETA tests."""
    res = outcomes(
        suite,
        suite_class("TestBroken", "BrokerConformance", "earlyeta://guard"),
        k="eta_not_early or delayed_tasks",
    )
    assert res["failed"] == {"TestBroken::test_eta_not_early_and_within_bound", "TestBroken::test_delayed_tasks"}, res


def test_lock_that_never_expires_is_caught(suite: pytest.Pytester) -> None:
    """A lock ignoring its TTL fails the expiry tests; the memory lock passes them."""
    res = outcomes(
        suite,
        suite_class("TestBroken", "LockConformance", "stucklock://guard", expiry_tolerance=0.5),
        suite_class("TestControl", "LockConformance", "memory://guard", expiry_tolerance=0.5),
        k="expiry",
    )
    expiry = {"test_expiry", "test_release_after_expiry_keeps_new_holder"}
    assert res["failed"] == {f"TestBroken::{t}" for t in expiry}, res
    assert {f"TestControl::{t}" for t in expiry} <= res["passed"], res


def test_lock_without_exclusion_is_caught(suite: pytest.Pytester) -> None:
    """A lock granting every key to everyone fails the exclusion tests and lets a periodic task
    fire once per scheduler instead of once per tick."""
    res = outcomes(
        suite,
        suite_class("TestBroken", "LockConformance", "nolock://guard"),
        suite_class(
            "TestBrokenBeat", "WorkflowConformance", "memory://guard", lock_url="nolock://guard", periodic_window=2.5
        ),
        k="excludes or exclusion_threads or once_per_tick",
    )
    assert res["failed"] == {
        "TestBroken::test_acquire_excludes_other_owners",
        "TestBroken::test_mutual_exclusion_threads",
        "TestBrokenBeat::test_periodic_task_once_per_tick",
    }, res


def test_non_atomic_chord_trigger_is_caught(suite: pytest.Pytester) -> None:
    """A backend whose chord flag is read-then-written fails the 50-thread exactly-once test."""
    res = outcomes(
        suite,
        suite_class("TestBroken", "BackendConformance", "racychord://guard"),
        suite_class("TestControl", "BackendConformance", "memory://guard"),
        k="chord_trigger",
    )
    assert res["failed"] == {"TestBroken::test_chord_trigger_exactly_once_concurrently"}, res
    assert "TestControl::test_chord_trigger_exactly_once_concurrently" in res["passed"], res


def test_non_atomic_rate_limit_is_caught(suite: pytest.Pytester) -> None:
    """A rate limiter that reads then writes the slot hands one slot to several callers."""
    res = outcomes(
        suite,
        suite_class("TestBroken", "BackendConformance", "racyrate://guard"),
        suite_class("TestControl", "BackendConformance", "memory://guard"),
        k="rate_limit_reserve_spacing",
    )
    assert res["failed"] == {"TestBroken::test_rate_limit_reserve_spacing_across_threads"}, res
    assert "TestControl::test_rate_limit_reserve_spacing_across_threads" in res["passed"], res


def test_revocations_that_never_expire_are_caught(suite: pytest.Pytester) -> None:
    """A backend that keeps revocations past their ttl fails the expiry test (and the round
    trip, which checks the ttl it reads back)."""
    res = outcomes(
        suite,
        suite_class("TestBroken", "BackendConformance", "everrevoke://guard", expiry_tolerance=0.5),
        suite_class("TestControl", "BackendConformance", "memory://guard"),
        k="revocation",
    )
    assert res["failed"] == {"TestBroken::test_revocation_expiry", "TestBroken::test_revocation_round_trip"}, res
    assert {"TestControl::test_revocation_expiry", "TestControl::test_revocation_round_trip"} <= res["passed"], res


def test_unregistered_scheme_fails(suite: pytest.Pytester) -> None:
    """The suite resolves the URL through the plugin host: an uninstalled scheme is an error."""
    res = outcomes(
        suite,
        suite_class("TestMissing", "LockConformance", "nosuchplugin://x", process_local=False),
        k="resolved_through_entry_point",
    )
    assert res["failed"] == {"TestMissing::test_resolved_through_entry_point"}, res


def test_override_without_xfail_fails_the_guard(suite: pytest.Pytester) -> None:
    """Overriding a suite test without an xfail reason, or deleting one, fails ``test_no_overrides``;
    an override marked ``xfail(reason=...)`` is accepted."""
    sneaky = """
        def test_priority(self):
            pass
        test_purge = None
    """
    honest = """
        @pytest.mark.xfail(reason="our priorities are approximate", strict=False)
        def test_priority(self):
            raise AssertionError("approximate")
    """
    res = outcomes(
        suite,
        suite_class("TestSneaky", "BrokerConformance", "memory://guard", body=sneaky),
        suite_class("TestHonest", "BrokerConformance", "memory://guard", body=honest),
        k="no_overrides",
    )
    assert res["failed"] == {"TestSneaky::test_no_overrides"}, res
    assert "TestHonest::test_no_overrides" in res["passed"], res
    out = suite.runpytest_inprocess("-p", "no:cacheprovider", "-k", "TestSneaky and no_overrides").stdout.str()
    assert "TestSneaky.test_priority overrides the conformance test" in out
    assert "TestSneaky.test_purge deletes the conformance test" in out


def test_guard_test_cannot_be_overridden() -> None:
    """Replacing ``test_no_overrides`` itself is refused when the class is defined."""
    with pytest.raises(TypeError, match="must not override test_no_overrides"):
        type("TestCheat", (BrokerConformance,), {"test_no_overrides": lambda self: None})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_require_server_skips_locally_with_redacted_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unreachable server without CI: a skip naming the URL, credentials redacted."""
    monkeypatch.delenv("CI", raising=False)
    url = f"redis://user:s3cret@127.0.0.1:{_closed_port()}/0"
    with pytest.raises(pytest.skip.Exception) as info:
        require_server(url)
    assert "redis://user:***@127.0.0.1" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_require_server_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unreachable server with CI set: an error, never a silent skip."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_server(f"amqp://guest:guest@127.0.0.1:{_closed_port()}/", timeout=0.5)


def test_require_server_passes_when_listening() -> None:
    """A listening server: the test goes on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        require_server("memcache://127.0.0.1", port=s.getsockname()[1])


def test_import_machinery_does_not_import_pytest() -> None:
    """Only ``machinery.testing`` imports pytest; the package and its transports never do."""
    code = (
        "import sys, machinery; from machinery.plugins import get_plugin_host; "
        "get_plugin_host().load(); get_plugin_host().broker_class('sqlite:///x.db'); "
        "assert 'pytest' not in sys.modules and '_pytest' not in sys.modules, 'pytest imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
