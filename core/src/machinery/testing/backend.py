"""Result backend contract tests: :class:`BackendConformance`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from machinery.interfaces import Backend
from machinery.plugins import get_plugin_host, scheme_of
from machinery.signature import new_uuid, results_for, task_state_from_mapping
from machinery.state import State, TaskResult, TaskState
from machinery.testing._guard import SuiteBase
from machinery.testing._support import wait_until
from machinery.testing._values import EVERY_RESULT, TRICKY_TEXT
from machinery.testing.backend_groups import GroupConformance
from machinery.testing.broker import require_capability

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.testing.oracle import BackendOracle

__all__ = ["BackendConformance"]


def _pairs(results: list[TaskResult] | None) -> list[tuple[str, Any]]:
    return [(r.type, r.value) for r in results or ()]


class BackendConformance(GroupConformance, SuiteBase):
    """The result backend contract. Subclass it in your plugin's tests.

    Needs the fixtures ``url`` and ``backend_oracle`` (a :class:`~machinery.testing.BackendOracle`).
    The backend class is resolved from ``backend_url`` through the plugin host.
    """

    _machinery_suite = True

    #: Seconds an expired record may still be visible after ``results_expire_in`` (clock slack).
    expiry_tolerance: ClassVar[float] = 2.5

    # -- fixtures -------------------------------------------------------------------------------

    @pytest.fixture
    def backend_class(self, backend_url: str) -> type[Backend]:
        """The backend class the plugin host resolves for ``backend_url``."""
        return get_plugin_host().backend_class(backend_url)

    @pytest.fixture
    def new_backend(
        self, backend_class: type[Backend], backend_url: str, machinery_config: Config
    ) -> Iterator[Callable[..., Backend]]:
        """Make backend instances (each with its own connections): ``new_backend(**config_changes)``."""
        made: list[Backend] = []

        def make(**changes: Any) -> Backend:
            cfg = machinery_config.replace(**changes) if changes else machinery_config
            b = backend_class(backend_url, cfg)
            made.append(b)
            return b

        yield make
        for b in made:
            b.close()

    @pytest.fixture
    def backend(self, new_backend: Callable[..., Backend]) -> Backend:
        """The backend under test."""
        return new_backend()

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def raw(oracle: BackendOracle, task_uuid: str) -> TaskState:
        """The state the oracle reads from the store, decoded."""
        raw = oracle.raw_state(task_uuid)
        assert raw is not None, f"oracle: nothing stored for {task_uuid}"
        return task_state_from_mapping(raw)

    # -- tests ----------------------------------------------------------------------------------

    def test_resolved_through_entry_point(self, backend_url: str, backend_class: type[Backend]) -> None:
        """The URL's scheme is registered through the plugin host and serves a Backend subclass."""
        assert scheme_of(backend_url) in get_plugin_host().schemes("backend")
        assert issubclass(backend_class, Backend)
        assert isinstance(backend_class.supports_expiry, bool)
        assert isinstance(backend_class.persistent, bool)

    def test_every_state_transition(self, backend: Backend, backend_oracle: BackendOracle) -> None:
        """PENDING, RECEIVED, STARTED, RETRY, SUCCESS and FAILURE are each stored and read back,
        through the plugin and straight from the store."""
        sig = self.signature()
        steps: list[tuple[str, Callable[[], object]]] = [
            (State.PENDING.value, lambda: backend.set_state_pending(sig)),
            (State.RECEIVED.value, lambda: backend.set_state_received(sig)),
            (State.STARTED.value, lambda: backend.set_state_started(sig)),
            (State.RETRY.value, lambda: backend.set_state_retry(sig)),
            (State.STARTED.value, lambda: backend.set_state_started(sig)),
            (State.SUCCESS.value, lambda: backend.set_state_success(sig, results_for(3))),
        ]
        for expected, step in steps:
            step()
            st = backend.get_state(sig.uuid)
            assert st is not None, f"nothing stored after {expected}"
            assert (st.task_uuid, st.state) == (sig.uuid, expected)
            raw = self.raw(backend_oracle, sig.uuid)
            assert (raw.task_uuid, raw.state) == (sig.uuid, expected)
        assert _pairs(backend.get_state(sig.uuid).results) == [("int64", 3)]  # type: ignore[union-attr]
        assert _pairs(self.raw(backend_oracle, sig.uuid).results) == [("int64", 3)]
        failing = self.signature()
        backend.set_state_pending(failing)
        assert backend.get_state(failing.uuid).task_name == "add"  # type: ignore[union-attr]
        backend.set_state_failure(failing, f"ValueError: {TRICKY_TEXT}")
        st = backend.get_state(failing.uuid)
        assert st is not None and st.is_failure and st.error == f"ValueError: {TRICKY_TEXT}"
        raw = self.raw(backend_oracle, failing.uuid)
        assert raw.state == "FAILURE" and raw.error == st.error

    def test_results_of_every_type(self, backend: Backend, backend_oracle: BackendOracle) -> None:
        """Results of every Go type (and several results, and none) come back typed and equal."""
        for value in EVERY_RESULT:
            sig = self.signature("echo")
            expected = results_for(value)
            backend.set_state_success(sig, expected)
            st = backend.get_state(sig.uuid)
            assert st is not None and st.is_success
            assert _pairs(st.results) == _pairs(expected), f"result {value!r} changed in the backend"
            assert _pairs(self.raw(backend_oracle, sig.uuid).results) == _pairs(expected)

    def test_unknown_state_is_none(self, backend: Backend, backend_oracle: BackendOracle) -> None:
        """Nothing stored reads as None."""
        missing = new_uuid()
        assert backend.get_state(missing) is None
        assert backend_oracle.raw_state(missing) is None

    def test_visible_to_other_instances(self, backend: Backend, new_backend: Callable[..., Backend]) -> None:
        """A state written through one instance (connection) is read through another."""
        sig = self.signature()
        backend.set_state_success(sig, results_for("shared"))
        st = new_backend().get_state(sig.uuid)
        assert st is not None and st.values == ["shared"]

    def test_bulk_states(self, backend: Backend) -> None:
        """``set_states_pending`` stores every member; ``_load_states`` reads them in order, None for
        missing ones."""
        sigs = [self.signature() for _ in range(5)]
        backend.set_states_pending(sigs)
        uuids = [s.uuid for s in sigs]
        loaded = backend._load_states([uuids[0], new_uuid(), *uuids[1:]])
        assert loaded[1] is None
        assert [s.task_uuid if s else None for s in loaded[:1] + loaded[2:]] == uuids
        assert all(s is not None and s.state == "PENDING" for s in loaded[:1] + loaded[2:])

    def test_deferred_stores(self, backend: Backend, new_backend: Callable[..., Backend]) -> None:
        """``_store_states(..., wait=False)``: RECEIVED/STARTED then the final state, neither
        waited for; once the final state's completion is done it is what every instance reads
        (the intermediate states never land after it), and every completion gets done."""
        for final in ("SUCCESS", "FAILURE"):
            sigs = [self.signature() for _ in range(20)]
            completions = []
            for sig in sigs:
                backend.set_state_received_started(sig)
                if final == "SUCCESS":
                    completions.append(backend.set_state_success(sig, results_for(7), wait=False))
                else:
                    completions.append(backend.set_state_failure(sig, "ValueError: no", wait=False))
            for c in completions:
                c.result(timeout=10)
            other = new_backend()
            for sig in sigs:
                st = other.get_state(sig.uuid)
                assert st is not None and st.state == final, f"{sig.uuid}: {st and st.state}, not {final}"
            time.sleep(0.05)  # a late intermediate write would land by now
            assert all(other.get_state(s.uuid).state == final for s in sigs)  # type: ignore[union-attr]

    def test_group_meta(self, backend: Backend, new_backend: Callable[..., Backend]) -> None:
        """``init_group`` stores the member UUIDs in order, not yet triggered."""
        group = new_uuid("group_")
        uuids = [new_uuid() for _ in range(4)]
        backend.init_group(group, uuids)
        for b in (backend, new_backend()):
            meta = b.get_group_meta(group)
            assert meta is not None
            assert meta.group_uuid == group and meta.task_uuids == uuids and not meta.chord_triggered
        assert backend.get_group_meta(new_uuid("group_")) is None

    def test_wait_for(self, backend: Backend, new_backend: Callable[..., Backend]) -> None:
        """``wait_for`` returns once another instance stores the final state, and gives up on time."""
        sig = self.signature()
        backend.set_state_pending(sig)
        writer = new_backend()
        timer = threading.Timer(0.3, lambda: writer.set_state_success(sig, results_for(9)))
        timer.start()
        t0 = time.monotonic()
        st = backend.wait_for(sig.uuid, timeout=10.0)
        timer.join()
        assert st is not None and st.is_success and st.values == [9]
        assert time.monotonic() - t0 < 5.0
        idle = self.signature()
        backend.set_state_started(idle)
        t0 = time.monotonic()
        st = backend.wait_for(idle.uuid, timeout=0.5)
        waited = time.monotonic() - t0
        assert st is None or not st.is_completed
        assert 0.4 <= waited < 2.5, f"wait_for(timeout=0.5) returned after {waited:.2f}s"

    def test_expiry(self, backend_class: type[Backend], new_backend: Callable[..., Backend]) -> None:
        """With ``results_expire_in`` set, states and group metadata disappear after it."""
        require_capability(backend_class, "supports_expiry", "results never expire")
        short = new_backend(results_expire_in=1)
        sig = self.signature()
        short.set_state_success(sig, results_for(1))
        group = new_uuid("group_")
        short.init_group(group, [sig.uuid])
        assert short.get_state(sig.uuid) is not None, "the state vanished at once"
        assert short.get_group_meta(group) is not None, "the group vanished at once"
        wait_until(
            lambda: short.get_state(sig.uuid) is None and short.get_group_meta(group) is None,
            1 + self.expiry_tolerance,
            interval=0.1,
            what="the state and group to expire after results_expire_in=1",
        )

    def test_purge(self, backend: Backend, backend_oracle: BackendOracle) -> None:
        """``purge_state`` and ``purge_group_meta`` delete records; deleting twice is no error."""
        sig = self.signature()
        backend.set_state_success(sig, results_for(1))
        backend.purge_state(sig.uuid)
        assert backend.get_state(sig.uuid) is None
        assert backend_oracle.raw_state(sig.uuid) is None
        backend.purge_state(sig.uuid)
        group = new_uuid("group_")
        backend.init_group(group, [sig.uuid])
        backend.purge_group_meta(group)
        assert backend.get_group_meta(group) is None
        backend.purge_group_meta(group)

    # -- worker registry (``supports_worker_registry``) -------------------------------------------

    @staticmethod
    def _worker_record(worker_id: str, queue: str = "q", done: int = 0) -> bytes:
        from machinery.registry import WorkerInfo

        info = WorkerInfo(worker_id=worker_id, consumer_tag="t", host="h", pid=1, queues=(queue,), concurrency=2)
        return WorkerInfo(**{**info.to_dict(), "queues": (queue,), "tasks_done": done}).to_json()

    @staticmethod
    def _listed(backend: Backend, ids: set[str]) -> dict[str, bytes]:
        from machinery.registry import WorkerInfo

        out: dict[str, bytes] = {}
        for raw in backend.list_workers():
            wid = WorkerInfo.from_json(raw).worker_id
            if wid in ids:
                out[wid] = raw
        return out

    def test_worker_registry_register_list_unregister(
        self, backend_class: type[Backend], new_backend: Callable[..., Backend]
    ) -> None:
        """Records written through one instance are listed by another (another process, say);
        a second write replaces the first; unregistering removes one at once, twice is no error."""
        from datetime import timedelta

        require_capability(backend_class, "supports_worker_registry", "no worker registry")
        one, two = new_backend(), new_backend()
        a, b = new_uuid("worker_"), new_uuid("worker_")
        one.register_worker(a, self._worker_record(a), timedelta(seconds=30))
        two.register_worker(b, self._worker_record(b), timedelta(seconds=30))
        assert set(self._listed(two, {a, b})) == {a, b}
        one.register_worker(a, self._worker_record(a, done=7), timedelta(seconds=30))
        listed = self._listed(one, {a, b})
        assert listed[a] == self._worker_record(a, done=7), "the second announcement did not replace the first"
        one.unregister_worker(a)
        assert set(self._listed(two, {a, b})) == {b}
        one.unregister_worker(a)
        two.unregister_worker(b)
        assert self._listed(one, {a, b}) == {}

    def test_worker_registry_expiry(self, backend_class: type[Backend], new_backend: Callable[..., Backend]) -> None:
        """A record that is not refreshed disappears after its ttl; one refreshed in time stays."""
        from datetime import timedelta

        require_capability(backend_class, "supports_worker_registry", "no worker registry")
        backend = new_backend()
        dying, alive = new_uuid("worker_"), new_uuid("worker_")
        ttl = timedelta(seconds=1)
        backend.register_worker(dying, self._worker_record(dying), ttl)
        backend.register_worker(alive, self._worker_record(alive), timedelta(seconds=30))
        assert dying in self._listed(backend, {dying}), "the record vanished at once"
        wait_until(
            lambda: dying not in self._listed(backend, {dying}),
            1 + self.expiry_tolerance,
            interval=0.1,
            what="a worker record to expire after its 1 s ttl",
        )
        assert alive in self._listed(backend, {alive}), "a record with a 30 s ttl expired early"
        backend.unregister_worker(alive)

    # -- revocations (``supports_revocation``) and rate limits (``supports_rate_limit``) ----------

    @staticmethod
    def _read_revocations(backend: Backend, cursor: int) -> tuple[dict[str, Any], int]:
        """Every live revocation after ``cursor`` (paging), by UUID, and the last cursor."""
        found: dict[str, Any] = {}
        while True:
            page, nxt = backend.revocations_since(cursor, 100)
            for r in page:
                found[r.task_uuid] = r
            if len(page) < 100 or nxt == cursor:
                return found, nxt
            cursor = nxt

    def test_revocation_round_trip(self, backend_class: type[Backend], new_backend: Callable[..., Backend]) -> None:
        """A revocation stored through one instance is read through another from its cursor, once;
        revoking again (with ``terminate``) shows it again, and ``terminate`` then stays set."""
        from datetime import timedelta

        require_capability(backend_class, "supports_revocation", "no revocations")
        one, two = new_backend(), new_backend()
        _, cursor = self._read_revocations(two, 0)
        a, b = new_uuid(), new_uuid()
        one.revoke([a, b], terminate=False, ttl=timedelta(seconds=30))
        found, cursor2 = self._read_revocations(two, cursor)
        assert {a, b} <= set(found), f"revocations not read back from cursor {cursor}: {sorted(found)}"
        for u in (a, b):
            r = found[u]
            assert r.terminate is False
            assert r.expires_in is not None and 0 < r.expires_in <= 30.5, f"expires_in {r.expires_in}"
        assert cursor2 != cursor, "the cursor did not move"
        again, cursor3 = self._read_revocations(two, cursor2)
        assert not ({a, b} & set(again)), "the same revocations were returned twice"
        one.revoke([a], terminate=True, ttl=timedelta(seconds=30))
        found, cursor4 = self._read_revocations(two, cursor3)
        assert a in found and found[a].terminate is True and b not in found
        one.revoke([a], terminate=False, ttl=timedelta(seconds=30))
        found, _ = self._read_revocations(two, cursor4)
        assert a in found and found[a].terminate is True, "terminate was lost by a second revoke"
        everything, _ = self._read_revocations(new_backend(), 0)
        assert {a, b} <= set(everything), "a new reader (a restarted worker) does not see them"

    def test_revocation_expiry(self, backend_class: type[Backend], new_backend: Callable[..., Backend]) -> None:
        """A revocation disappears after its ttl; one stored without a ttl has ``expires_in`` None."""
        from datetime import timedelta

        require_capability(backend_class, "supports_revocation", "no revocations")
        backend = new_backend()
        short, forever = new_uuid(), new_uuid()
        backend.revoke([short], terminate=False, ttl=timedelta(seconds=1))
        backend.revoke([forever], terminate=False, ttl=None)
        found, _ = self._read_revocations(backend, 0)
        assert short in found, "the revocation vanished at once"
        assert found[forever].expires_in is None
        wait_until(
            lambda: short not in self._read_revocations(backend, 0)[0],
            1 + self.expiry_tolerance,
            interval=0.1,
            what="a revocation to expire after its 1 s ttl",
        )
        assert forever in self._read_revocations(backend, 0)[0]

    def test_rate_limit_reserve_spacing_across_threads(
        self, backend_class: type[Backend], new_backend: Callable[..., Backend]
    ) -> None:
        """24 reservations made at once from 4 instances and threads, with slots 2 s apart and
        ``max_wait`` 11 s: exactly the 6 slots within reach are handed out, one each (waits about
        0, 2, 4 ... 10 s), and the other callers are refused. A store whose read-modify-write is
        not atomic hands the same slot to several callers, and more than 6 succeed."""
        require_capability(backend_class, "supports_rate_limit", "no shared rate limiter")
        key = new_uuid("rate_")
        interval, max_wait, n = 2.0, 11.0, 24
        backends = [new_backend() for _ in range(4)]
        granted: list[float] = []
        refused: list[float] = []
        errors: list[BaseException] = []
        start = threading.Barrier(n)

        def reserve(i: int) -> None:
            try:
                start.wait(10)
                ok, wait = backends[i % len(backends)].rate_limit_reserve(key, interval, max_wait)
                (granted if ok else refused).append(wait)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        t0 = time.monotonic()
        threads = [threading.Thread(target=reserve, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        elapsed = time.monotonic() - t0
        assert not errors, f"rate_limit_reserve raised: {errors[0]!r}"
        within = int(max_wait // interval) + 1
        late = int(elapsed // interval)  # a slow run lets a caller reach one more slot per interval
        assert within <= len(granted) <= within + late, (
            f"{len(granted)} of {n} reservations granted in {elapsed:.2f}s, expected {within}: "
            f"waits {sorted(round(w, 2) for w in granted)}"
        )
        waits = sorted(granted)
        for k, w in enumerate(waits[:within]):
            assert k * interval - 1.0 - elapsed <= w <= k * interval + 0.5, f"slot {k} is {w:.2f}s away: {waits}"
        assert all(w > max_wait for w in refused), f"a refusal within max_wait: {sorted(refused)}"

    def test_rate_limit_refuses_beyond_max_wait(
        self, backend_class: type[Backend], new_backend: Callable[..., Backend]
    ) -> None:
        """A slot further than ``max_wait`` is not reserved (and a refusal reserves nothing)."""
        require_capability(backend_class, "supports_rate_limit", "no shared rate limiter")
        backend = new_backend()
        key = new_uuid("rate_")
        ok, wait = backend.rate_limit_reserve(key, 10.0, 1.0)
        assert ok and wait <= 0.5, (ok, wait)
        for _ in range(2):
            ok, wait = backend.rate_limit_reserve(key, 10.0, 1.0)
            assert not ok, "a slot 10 s away was reserved with max_wait=1"
            assert 8.0 <= wait <= 10.5, f"next slot reported {wait:.2f}s away, expected about 10"
