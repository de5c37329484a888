"""A result backend's store contract, and Go Machinery's operations built on it, once.

:class:`BackendOps` is the base of :class:`machinery.interfaces.Backend`. It declares the
primitives a plugin implements (six abstract ones, three optional ones for speed) and the
capabilities that change how the operations use them, and it defines every Go-visible operation
(``set_state_*``, ``get_state``, ``init_group``, ``group_completed``, ``group_task_states``,
``trigger_chord``...) as ``@typing.final``: a plugin declares what its store does differently,
it never re-implements an operation. mypy reports an override, and so does the class statement
at run time (:meth:`BackendOps.__init_subclass__`).

:class:`Completion` is what :meth:`BackendOps._store_states` returns: a store that batches
writes may answer later, and the worker acknowledges a message only once it has.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Literal, final

from machinery.completion import _STORED, Completion, _log
from machinery.state import GroupMeta, State, TaskResult, TaskState, results_lifetime

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.signature import Signature

__all__ = ["BackendOps", "ChordOutcome", "Completion"]


@dataclass(frozen=True)
class ChordOutcome:
    """What :meth:`BackendOps.complete_chord_member` found, for the worker that stored a member.

    ``kind`` is one of:

    - ``"not_done"``: some member is not SUCCESS or FAILURE yet;
    - ``"missing"``: the group has no record (expired, lost, never written) and no counter;
    - ``"lost_race"``: the group is complete, but another caller triggered the chord;
    - ``"member_failed"``: this caller triggered it, but ``failed`` (a member's state) is not
      SUCCESS, so the callback is not sent;
    - ``"fire"``: this caller triggered it and every member succeeded: send the callback with
      ``states`` (group order; completion order for a Go producer's group without a record);
    - ``"vanished"``: this caller triggered it, but the member states could not be read any more.
    """

    kind: Literal["not_done", "missing", "lost_race", "member_failed", "fire", "vanished"]
    states: list[TaskState] = field(default_factory=list)
    failed: TaskState | None = None


_NOT_DONE = ChordOutcome("not_done")
_MISSING = ChordOutcome("missing")
_LOST_RACE = ChordOutcome("lost_race")


def _warn_unstored(error: BaseException | None) -> None:
    # (one function for every task: the store's error names the task)
    if error is not None:
        _log().warning("could not store a task's intermediate state: %s", error)


#: The operations a backend may not override (see :meth:`BackendOps.__init_subclass__`).
FINAL_OPERATIONS = frozenset(
    {
        "lifetime",
        "expires_in",
        "_ttl",
        "_state",
        "_set",
        "set_state_pending",
        "pending_state",
        "set_states_pending",
        "set_state_received",
        "set_state_started",
        "set_state_received_started",
        "set_state_retry",
        "set_state_success",
        "set_state_failure",
        "_store_final",
        "get_state",
        "init_group",
        "group_task_states",
        "group_completed",
        "trigger_chord",
        "complete_chord_member",
        "_member_states",
        "_read_group",
        "get_group_meta",
        "purge_state",
        "purge_group_meta",
    }
)


class BackendOps(ABC):
    """The store contract of a result backend and the Go operations built on it.

    Primitives to implement: :meth:`_store_state`, :meth:`_load_state`, :meth:`_store_group`,
    :meth:`_load_group`, :meth:`_mark_chord_triggered`, :meth:`_delete`. Optional, for speed:
    :meth:`_store_states` (batch, or defer and answer through a :class:`Completion`),
    :meth:`_load_states` (one round trip) and ``wait_for`` (block instead of polling). A store
    with Go's group-completion counter declares :attr:`counts_completed` and implements the
    four ``_completed`` primitives.
    """

    #: The ``TTL`` field of stored states and groups holds the record's lifetime in seconds, as
    #: Go's DynamoDB backend writes it (Go's Redis, AMQP, memcache and Mongo backends leave 0).
    stores_ttl: ClassVar[bool] = False
    #: Go's group-completion counter (Go's AMQP backend: a queue per group into which every
    #: member's final state is also published). Every final state of a group member then goes
    #: to :meth:`_mark_completed` before it is stored, and :meth:`group_completed` counts first
    #: (:meth:`_completed_count`); a group without a record, as Go producers send them,
    #: completes when the count is reached, and its states are :meth:`_completed_states`.
    counts_completed: ClassVar[bool] = False

    config: Config

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = sorted(FINAL_OPERATIONS.intersection(vars(cls)))
        if overridden and cls.__module__ != __name__:
            raise TypeError(
                f"{cls.__qualname__} overrides {', '.join(overridden)}: the Go operations are final; "
                "implement the primitives and declare capabilities instead (docs/writing-a-plugin.md)"
            )

    @property
    @final
    def expires_in(self) -> timedelta | None:
        """Result lifetime from ``results_expire_in`` (None: keep forever); see :meth:`lifetime`."""
        secs = self.lifetime()
        return timedelta(seconds=secs) if secs is not None else None

    @final
    def lifetime(self) -> int | None:
        """Seconds a stored record lives, from ``results_expire_in`` as Go reads it: 0 means Go's
        default 3600 (``getExpiration``, ``config.DefaultResultsExpireIn``); a negative value
        (Python only) keeps records forever and gives None."""
        return results_lifetime(self.config.results_expire_in)

    # -- primitives ---------------------------------------------------------------------------

    @abstractmethod
    def _store_state(self, state: TaskState) -> None:
        """Write (replace) the state record of ``state.task_uuid``, with expiry if supported."""

    @abstractmethod
    def _load_state(self, task_uuid: str) -> TaskState | None:
        """Read a state record; None when there is none (or it has expired)."""

    @abstractmethod
    def _store_group(self, meta: GroupMeta) -> None:
        """Write the metadata of a new group."""

    @abstractmethod
    def _load_group(self, group_uuid: str) -> GroupMeta | None:
        """Read group metadata; None when unknown or expired."""

    @abstractmethod
    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        """Atomically set the group's ``chord_triggered`` flag.

        Must return True to exactly one caller however many call at once, across threads,
        processes and machines, and False to all others (and when the group is unknown).
        """

    @abstractmethod
    def _delete(self, uuid: str) -> None:
        """Delete a task state or group record. Deleting what is absent is not an error."""

    def _load_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """Read several states; override to do it in one round trip."""
        return [self._load_state(u) for u in task_uuids]

    def _store_states(self, states: Sequence[TaskState], *, wait: bool = True) -> Completion:
        """Write several states (in order: a later one of the same task replaces an earlier one).

        With ``wait`` (the default) return once they are stored, raising if they could not be,
        and return :meth:`Completion.stored`. With ``wait=False`` the store may return before
        they are stored, with a pending :class:`Completion` it resolves once they are (or with
        the error); it must then guarantee that they land before any later write of this
        process (a queue of ordered pipelines, say). Writes of a task's intermediate states
        (none of them completed) made this way may be dropped, their completion resolved as
        stored, when a later write of the same task supersedes them before they leave. A store
        that cannot defer ignores ``wait``; it may raise either way.

        The default writes them one by one with :meth:`_store_state`; override it to write them
        in one round trip, or to batch writes of many threads and answer later.
        """
        for st in states:
            self._store_state(st)
        return _STORED

    # -- Go's group-completion counter (declared by :attr:`counts_completed`) ---------------------

    def _mark_completed(self, group_uuid: str, state: TaskState) -> None:
        """Count a member's final ``state`` in the group's counter (before it is stored)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no group-completion counter")

    def _completed_count(self, group_uuid: str) -> int | None:
        """How many completions the group's counter holds, None when it has none (yet)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no group-completion counter")

    def _completed_states(self, group_uuid: str) -> list[TaskState]:
        """The states in the group's counter, in completion order, one per task (the newest of
        duplicates), without removing them; empty when there is none."""
        raise NotImplementedError(f"{type(self).__name__} keeps no group-completion counter")

    def _purge_completed(self, group_uuid: str) -> None:
        """Delete the group's counter once its states were read (Go's worker purges them)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no group-completion counter")

    # -- Go-visible operations (final) ----------------------------------------------------------

    @final
    def _ttl(self) -> int:
        """The ``TTL`` field of stored states and groups (see :attr:`stores_ttl`)."""
        return (self.lifetime() or 0) if self.stores_ttl else 0

    @final
    def _state(self, signature: Signature, state: str, **fields: Any) -> TaskState:
        if not signature.uuid:
            raise ValueError(f"task {signature.name!r} has no UUID: its state would be stored under the empty key")
        return TaskState(
            task_uuid=signature.uuid,
            state=state,
            task_name=signature.name,
            created_at=datetime.now(timezone.utc),
            ttl=self._ttl(),
            **fields,
        )

    @final
    def _set(self, signature: Signature, state: str, **fields: Any) -> TaskState:
        ts = self._state(signature, state, **fields)
        self._store_state(ts)
        return ts

    @final
    def set_state_pending(self, signature: Signature) -> None:
        """Store PENDING (called by the producer before publishing)."""
        self._set(signature, State.PENDING.value)

    @final
    def pending_state(self, signature: Signature) -> TaskState:
        """The PENDING record :meth:`set_state_pending` would store (for a broker that stores it
        along with the message: see the ``machinery_fused_publisher`` hook)."""
        return self._state(signature, State.PENDING.value)

    @final
    def set_states_pending(self, signatures: Sequence[Signature]) -> None:
        """Store PENDING for several tasks (groups), in one round trip where the store allows."""
        for s in signatures:
            if not s.uuid:
                raise ValueError(f"task {s.name!r} has no UUID: its state would be stored under the empty key")
        now = datetime.now(timezone.utc)
        ttl = self._ttl()
        self._store_states(
            [
                TaskState(task_uuid=s.uuid, state=State.PENDING.value, task_name=s.name, created_at=now, ttl=ttl)
                for s in signatures
            ]
        )

    @final
    def set_state_received(self, signature: Signature) -> None:
        """Store RECEIVED (the worker took the message)."""
        self._set(signature, State.RECEIVED.value)

    @final
    def set_state_started(self, signature: Signature) -> None:
        """Store STARTED (the task function is about to run)."""
        self._set(signature, State.STARTED.value)

    @final
    def set_state_received_started(self, signature: Signature) -> None:
        """Store RECEIVED then STARTED without waiting where the store defers writes
        (:meth:`_store_states` with ``wait=False``): the task's final state, stored and confirmed
        later, is what counts, so a deferred write that fails is logged. An error known at once
        is raised."""
        now = datetime.now(timezone.utc)
        ttl = self._ttl()
        uuid, name = signature.uuid, signature.name
        stored = self._store_states(
            [
                TaskState(task_uuid=uuid, state=State.RECEIVED.value, task_name=name, created_at=now, ttl=ttl),
                TaskState(task_uuid=uuid, state=State.STARTED.value, task_name=name, created_at=now, ttl=ttl),
            ],
            wait=False,
        )
        if stored.done():
            stored.result()
        else:
            stored.add_done_callback(_warn_unstored)

    @final
    def set_state_retry(self, signature: Signature) -> None:
        """Store RETRY (the task failed and was re-sent for later)."""
        self._set(signature, State.RETRY.value)

    @final
    def set_state_success(self, signature: Signature, results: list[TaskResult], *, wait: bool = True) -> Completion:
        """Store SUCCESS with the task's typed results.

        :param wait: True (Go's behaviour): return once stored, raising if it was not. False:
            the store may answer later, through the returned :class:`Completion` (the worker
            acknowledges the message from it, so the acknowledgement still follows the store).
        """
        return self._store_final(signature, self._state(signature, State.SUCCESS.value, results=results), wait)

    @final
    def set_state_failure(self, signature: Signature, error: str, *, wait: bool = True) -> Completion:
        """Store FAILURE with the error string (``wait`` as for :meth:`set_state_success`)."""
        return self._store_final(signature, self._state(signature, State.FAILURE.value, error=error), wait)

    @final
    def _store_final(self, signature: Signature, state: TaskState, wait: bool) -> Completion:
        if self.counts_completed and signature.group_uuid and signature.group_task_count:
            # Go stores first; here the completion goes first so that whoever sees the final
            # state also sees the group's count include it (a duplicate after a failed store is
            # harmless: group_completed checks the members' states where a record exists)
            self._mark_completed(signature.group_uuid, state)
        if wait:
            self._store_state(state)
            return _STORED
        try:
            return self._store_states((state,), wait=False)
        except Exception as exc:  # noqa: BLE001 - reported through the completion
            return Completion.failed(exc)

    @final
    def get_state(self, task_uuid: str) -> TaskState | None:
        """The stored state, or None when nothing is stored (unknown, expired or evicted)."""
        return self._load_state(task_uuid)

    @final
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        """Record a new group and its member tasks, in order."""
        self._store_group(
            GroupMeta(
                group_uuid=group_uuid,
                task_uuids=list(task_uuids),
                created_at=datetime.now(timezone.utc),
                ttl=self._ttl(),
            )
        )

    @final
    def group_task_states(self, group_uuid: str, group_task_count: int) -> list[TaskState]:
        """The states of the group's tasks in group order (missing ones as PENDING). With Go's
        counter (:attr:`counts_completed`) and no group record (a Go producer's group): the
        counted states, in completion order as Go returns them; the counter is then purged."""
        meta = self._load_group(group_uuid)
        if meta is not None:
            states = self._member_states(meta)
        elif self.counts_completed:
            states = self._completed_states(group_uuid)
        else:
            return []
        if states and self.counts_completed:
            self._purge_completed(group_uuid)
        return states

    @final
    def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        """True when every task of the group is SUCCESS or FAILURE.

        With Go's counter (:attr:`counts_completed`) the count is read first (fewer than
        ``group_task_count``: not yet, one round trip); with a group record every member's state
        is then checked (a duplicate completion cannot fake it), without one (a Go producer's
        group) the count decides, as in Go."""
        return self._read_group(group_uuid, group_task_count)[0]

    @final
    def _member_states(self, meta: GroupMeta) -> list[TaskState]:
        """The states of the group's members in group order, a missing one as PENDING."""
        loaded = self._load_states(meta.task_uuids)
        return [
            s if s is not None else TaskState(task_uuid=u, state=State.PENDING.value)
            for u, s in zip(meta.task_uuids, loaded)
        ]

    @final
    def _read_group(
        self, group_uuid: str, group_task_count: int
    ) -> tuple[bool, GroupMeta | None, list[TaskState] | None, int | None]:
        """Go's ``GroupCompleted`` test, reading each thing once: (complete, the record or None,
        the members' states in group order or None when not read, the counter or None)."""
        count = None
        if self.counts_completed:
            count = self._completed_count(group_uuid)
            if count is not None and count < group_task_count:
                return False, None, None, count
        meta = self._load_group(group_uuid)
        if meta is None:
            return count is not None, None, None, count
        states = self._member_states(meta)
        done = sum(1 for s in states if s.is_completed)
        return done == group_task_count or (done == len(meta.task_uuids) and done > 0), meta, states, count

    @final
    def trigger_chord(self, group_uuid: str) -> bool:
        """True exactly once per group: the caller that gets True sends the chord callback."""
        return self._mark_chord_triggered(group_uuid)

    @final
    def complete_chord_member(self, group_uuid: str, group_task_count: int) -> ChordOutcome:
        """After a chord member's final state is stored: Go's ``GroupCompleted``, ``TriggerChord``
        and ``GroupTaskStates`` in one pass that reads the group record and its states once.

        The same primitives in the same order as the three operations (so the same answers, and
        the chord is triggered exactly once however many members finish at once), minus the
        repeated reads: a member that does not complete the group costs one read of the record
        and one of the states (a counter read first with :attr:`counts_completed`); the member
        that completes it adds the trigger, and the states it already read are the ones sent (a
        completed state is final).
        """
        complete, meta, states, count = self._read_group(group_uuid, group_task_count)
        if not complete:
            return _MISSING if meta is None and count is None else _NOT_DONE
        if not self._mark_chord_triggered(group_uuid):
            return _LOST_RACE
        if states is None:
            states = self._completed_states(group_uuid)
        if states and self.counts_completed:
            self._purge_completed(group_uuid)
        if not states:
            return ChordOutcome("vanished")
        for st in states:
            if not st.is_success:
                return ChordOutcome("member_failed", states, st)
        return ChordOutcome("fire", states)

    @final
    def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        """The group's metadata, or None."""
        return self._load_group(group_uuid)

    @final
    def purge_state(self, task_uuid: str) -> None:
        """Delete a task's state."""
        self._delete(task_uuid)

    @final
    def purge_group_meta(self, group_uuid: str) -> None:
        """Delete a group's metadata."""
        self._delete(group_uuid)

    def wait_for(self, task_uuid: str, timeout: float, poll_interval: float = 0.05) -> TaskState | None:
        """Block until the task's state is SUCCESS or FAILURE or ``timeout`` passes.

        Returns the last state seen (None if none). The default polls, starting at 0.2 ms and
        backing off to ``poll_interval``; stores that can block (pub/sub, conditions) override it.
        """
        deadline = time.monotonic() + timeout
        delay = 0.0002
        state = self._load_state(task_uuid)
        while state is None or not state.is_completed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, poll_interval)
            state = self._load_state(task_uuid)
        return state
