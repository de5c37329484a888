"""The three transport contracts: :class:`Broker`, :class:`Backend` and :class:`Lock`.

A plugin implements a handful of abstract methods; everything Go-visible (the six
``set_state_*`` calls, ``group_completed``, ``trigger_chord``...) is concrete here and built on
those primitives. Capabilities are declared as class attributes, never discovered by failure:
the core reads them (for example to emulate ETA on a broker without native delay) and so does
the conformance suite (to skip with a stated reason).

Delivery is **at-least-once**: a broker must keep a delivered message until the worker calls
:meth:`Broker.ack`, which it does only after the task's final state is stored; a worker that
dies before that must cause the message to be delivered again.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.state import GroupMeta, State, TaskResult, TaskState, results_lifetime

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.revoke import Revocation
    from machinery.signature import Signature

__all__ = ["Backend", "Broker", "DeadLetter", "Delivery", "Lock"]


@dataclass(slots=True)
class Delivery:
    """One message handed to the worker by :meth:`Broker.consume`.

    :param body: the raw message body (Go Machinery's signature JSON).
    :param queue: the queue it came from.
    :param tag: the broker's own handle (delivery tag, receipt handle, lease id...).
    :param redelivered: True when the broker knows this is a second or later delivery.
    :param attributes: broker-specific extras (message attributes, headers...).
    """

    body: bytes
    queue: str
    tag: Any = None
    redelivered: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message a broker keeps in its dead letters (see :attr:`Broker.supports_dead_letters`).

    :param id: the broker's handle for it, stable while it is kept (a row id, a sequence
        number, a hash of the body...); what ``machinery dead show|replay`` take.
    :param queue: the queue it was taken from.
    :param body: the message body, exactly as it was delivered.
    :param dead_at: when it was dead-lettered, where the broker records it.
    :param deliveries: how many times it was delivered, where the broker counts.
    """

    id: str
    queue: str
    body: bytes
    dead_at: datetime | None = None
    deliveries: int | None = None


class Broker(ABC):
    """Moves task messages; nothing more.

    Subclasses are constructed as ``cls(url, config)`` by the plugin host. They must be safe to
    call from several threads: ``publish`` from producers and workers at once, ``ack`` and
    ``nack`` from the worker's task threads while ``consume`` runs in the consumer thread.
    """

    #: The broker holds a message with a future ETA until it is due (otherwise the worker
    #: re-schedules early deliveries with :meth:`nack` and ``delay``).
    supports_native_delay: ClassVar[bool] = False
    #: ``Signature.priority`` orders delivery (higher first).
    supports_priority: ClassVar[bool] = False
    #: :meth:`pending_tasks` works.
    supports_pending_listing: ClassVar[bool] = False
    #: :meth:`delayed_tasks` works.
    supports_delayed_listing: ClassVar[bool] = False
    #: An unacknowledged message comes back after its consumer dies (kill -9).
    redelivers_unacked: ClassVar[bool] = True
    #: How long, at most, an unacknowledged message of a dead consumer takes to come back.
    redelivery_timeout: ClassVar[float] = 30.0
    #: :meth:`purge` works.
    supports_purge: ClassVar[bool] = True
    #: Config section (YAML mapping) this transport owns, such as ``"redis"``.
    config_section: ClassVar[str | None] = None
    #: The broker keeps the messages dropped with ``nack(requeue=False)``, and
    #: :meth:`list_dead_letters` and :meth:`remove_dead_letter` work (``machinery dead``).
    supports_dead_letters: ClassVar[bool] = False

    def __init__(self, url: str, config: Config) -> None:
        self.url = url
        self.config = config

    @property
    def default_queue(self) -> str:
        """The queue used when a signature names none."""
        return self.config.default_queue

    def adjust_routing_key(self, signature: Signature) -> None:
        """Fill in ``signature.routing_key`` when empty (Go's ``AdjustRoutingKey``).

        The default uses the default queue; AMQP overrides it with its binding-key rules.
        """
        if not signature.routing_key:
            signature.routing_key = self.default_queue

    def queue_for(self, signature: Signature) -> str:
        """The queue a signature is published to (after :meth:`adjust_routing_key`)."""
        return signature.routing_key or self.default_queue

    @abstractmethod
    def publish(self, body: bytes, signature: Signature) -> None:
        """Publish one encoded message.

        Called after :meth:`adjust_routing_key`. ``body`` is ``encode_signature(signature)``;
        ``signature`` is there for routing (``routing_key``), ``eta``, ``priority`` and headers.
        Must return only once the broker has accepted the message.

        :raises machinery.errors.PublishError: the broker refused or did not confirm it.
        :raises machinery.errors.BrokerConnectionError: the broker cannot be reached.
        """

    def publish_many(self, items: Sequence[tuple[bytes, Signature]]) -> None:
        """Publish several messages; brokers override this to pipeline or batch.

        :raises machinery.errors.PublishError: when any message could not be published.
        """
        for body, sig in items:
            self.publish(body, sig)

    def publish_pending(self, body: bytes, signature: Signature, backend: Backend) -> bool:
        """Store the task's PENDING state in ``backend`` and publish it, in one round trip.

        A broker that shares its store with ``backend`` (the same Redis server, say) overrides
        this to send both writes together, PENDING first; both must be confirmed before it
        returns True. The default returns False without doing anything, and the producer then
        stores PENDING and publishes one after the other.

        :raises machinery.errors.BackendError: PENDING was not stored.
        :raises machinery.errors.PublishError: the message was not accepted.
        """
        return False

    @abstractmethod
    def consume(self, queue: str, *, prefetch: int, stop: threading.Event) -> Iterator[Delivery]:
        """Yield deliveries from ``queue`` until ``stop`` is set.

        The generator must notice ``stop`` within about a second, then return, leaving every
        message it has not yielded in the queue. It is advanced only when the worker has a free
        slot, so it should not take more than ``prefetch`` messages ahead. It may yield messages
        whose ETA is in the future only if :attr:`supports_native_delay` is False. Connection
        loss should be handled inside (log, reconnect with back-off) rather than raised.
        """

    @abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """Remove a message for good. Called after the task's final state is stored."""

    @abstractmethod
    def nack(self, delivery: Delivery, *, requeue: bool = True, delay: float = 0.0) -> None:
        """Give a message back (``requeue``) or drop it.

        :param requeue: make it deliverable again; False drops (or dead-letters) it.
        :param delay: make it deliverable only after this many seconds (used for early ETAs and
            for unregistered tasks); brokers without a way to delay may ignore it only when
            :attr:`supports_native_delay` is True and they republish with the ETA instead.
        """

    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        """Signatures waiting in ``queue`` (default queue if None), oldest first."""
        raise NotImplementedError(f"{type(self).__name__} cannot list pending tasks")

    def delayed_tasks(self) -> list[Signature]:
        """Signatures held until their ETA, soonest first."""
        raise NotImplementedError(f"{type(self).__name__} cannot list delayed tasks")

    def purge(self, queue: str | None = None) -> int:
        """Delete every waiting message of ``queue``; returns how many were removed if known."""
        raise NotImplementedError(f"{type(self).__name__} cannot purge queues")

    # -- dead letters (declared by :attr:`supports_dead_letters`) --------------------------------

    def list_dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """The dead letters of ``queue``, oldest first; with None, those of every queue where
        the broker can find them all, else of the default queue."""
        raise NotImplementedError(f"{type(self).__name__} keeps no dead letters")

    def get_dead_letter(self, letter_id: str, queue: str | None = None) -> DeadLetter | None:
        """One dead letter by :attr:`DeadLetter.id`, or None. The default searches
        :meth:`list_dead_letters`; brokers override it where they can look one up directly."""
        return next((d for d in self.list_dead_letters(queue) if d.id == letter_id), None)

    def remove_dead_letter(self, letter: DeadLetter) -> bool:
        """Delete one dead letter for good. :returns: False when it was already gone."""
        raise NotImplementedError(f"{type(self).__name__} keeps no dead letters")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""


class Backend(ABC):
    """Stores task states, results and group metadata.

    A plugin implements six primitives (``_store_state``, ``_load_state``, ``_store_group``,
    ``_load_group``, ``_mark_chord_triggered``, ``_delete``); the public operations below are
    built on them. Override :meth:`_load_states` to read several states in one round trip and
    :meth:`wait_for` where the store can block instead of being polled.
    """

    #: Stored records expire after ``config.results_expire_in`` seconds.
    supports_expiry: ClassVar[bool] = True
    #: Records survive a restart of the server (False for caches such as memcached).
    persistent: ClassVar[bool] = True
    #: :meth:`register_worker`, :meth:`unregister_worker` and :meth:`list_workers` work (the
    #: live worker registry behind ``machinery inspect workers`` and ``machinery ping``).
    supports_worker_registry: ClassVar[bool] = False
    #: Config section (YAML mapping) this transport owns.
    config_section: ClassVar[str | None] = None
    #: Chords need the group record :meth:`init_group` writes (False where a group without one,
    #: as Go's AMQP backend sends, completes all the same).
    needs_group_record: ClassVar[bool] = True
    #: :meth:`revoke` and :meth:`revocations_since` work: revoked task UUIDs are stored with an
    #: expiry and shared by every worker of this store (see :mod:`machinery.revoke`).
    supports_revocation: ClassVar[bool] = False
    #: :meth:`rate_limit_reserve` is atomic across every worker sharing this store (otherwise
    #: each worker enforces task rate limits alone; see :mod:`machinery.ratelimit`).
    supports_rate_limit: ClassVar[bool] = False

    def __init__(self, url: str, config: Config) -> None:
        self.url = url
        self.config = config

    @property
    def expires_in(self) -> timedelta | None:
        """Result lifetime from ``results_expire_in`` (None: keep forever); see :meth:`lifetime`."""
        secs = self.lifetime()
        return timedelta(seconds=secs) if secs is not None else None

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

    def _store_states(self, states: Sequence[TaskState]) -> None:
        """Write several states; override to do it in one round trip."""
        for st in states:
            self._store_state(st)

    def _store_states_unconfirmed(self, states: Sequence[TaskState]) -> None:
        """Write a task's intermediate states (RECEIVED, STARTED) without waiting for the store's
        reply, where it guarantees they land before any later write of this process (a queue of
        ordered pipelines, for instance); a write that fails is logged, and the task's final
        state, written and confirmed later, is what counts. Default: :meth:`_store_states`."""
        self._store_states(states)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""

    # -- worker registry (Python-only; declared by :attr:`supports_worker_registry`) -------------

    def register_worker(self, worker_id: str, record: bytes, ttl: timedelta) -> None:
        """Write (replace) a worker's record, visible for ``ttl`` unless written again.

        Called by each worker at start and at every heartbeat. The keys or rows used must stay
        out of Go Machinery's namespaces (Go never reads them).

        :param worker_id: the worker's unique id.
        :param record: the record (:class:`machinery.registry.WorkerInfo` JSON), stored as is.
        :param ttl: how long it stays visible.
        """
        raise NotImplementedError(f"{type(self).__name__} has no worker registry")

    def unregister_worker(self, worker_id: str) -> None:
        """Delete a worker's record at once (the worker stopped). Absent is not an error."""
        raise NotImplementedError(f"{type(self).__name__} has no worker registry")

    def list_workers(self) -> list[bytes]:
        """The records of every worker whose ``ttl`` has not run out, in any order."""
        raise NotImplementedError(f"{type(self).__name__} has no worker registry")

    # -- revocations and rate limits (Python-only; ``supports_revocation``, ``supports_rate_limit``)

    def revoke(self, task_uuids: Sequence[str], *, terminate: bool, ttl: timedelta | None) -> None:
        """Store revocations of ``task_uuids`` for ``ttl`` (None: forever).

        Each one gets a new sequence number from the store, greater than every earlier one, so
        :meth:`revocations_since` returns it to every reader whose cursor is behind. Revoking a
        UUID again replaces its record (a new number, the new expiry); ``terminate`` stays True
        once set while the record lives. Keys or rows must stay out of Go's namespaces.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot store revocations")

    def revocations_since(self, cursor: int, limit: int = 1000) -> tuple[list[Revocation], int]:
        """The live revocations stored after ``cursor`` (0: all of them), oldest first, at most
        ``limit``; and the cursor to pass next time.

        Called by every worker twice a second: it must cost one round trip and return quickly
        when nothing is new. When the store was emptied (its numbers restarted below ``cursor``)
        it must start again from 0.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot store revocations")

    def rate_limit_reserve(self, key: str, interval: float, max_wait: float) -> tuple[bool, float]:
        """Reserve the next start for ``key`` (GCRA), atomically across every caller.

        With ``tat`` the stored time of the next free slot (now if absent or past): when
        ``tat - now <= max_wait``, store ``tat + interval`` and return ``(True, tat - now)``;
        else store nothing and return ``(False, tat - now)``. Records may expire once past.

        :param key: the task name.
        :param interval: seconds between two starts.
        :param max_wait: the furthest slot, in seconds from now, that may be reserved.
        """
        raise NotImplementedError(f"{type(self).__name__} has no shared rate limiter")

    # -- Go-visible operations (template methods) ---------------------------------------------

    def _ttl(self) -> int:
        """The ``TTL`` field of stored states and groups: 0, as Go's Redis, AMQP, memcache and
        Mongo backends leave it (only Go's DynamoDB backend sets it, to the absolute expiry;
        a backend that does so overrides this)."""
        return 0

    def _state(self, signature: Signature, state: str, **fields: Any) -> TaskState:
        return TaskState(
            task_uuid=signature.uuid,
            state=state,
            task_name=signature.name,
            created_at=datetime.now(timezone.utc),
            ttl=self._ttl(),
            **fields,
        )

    def _set(self, signature: Signature, state: str, **fields: Any) -> TaskState:
        ts = self._state(signature, state, **fields)
        self._store_state(ts)
        return ts

    def set_state_pending(self, signature: Signature) -> None:
        """Store PENDING (called by the producer before publishing)."""
        self._set(signature, State.PENDING.value)

    def pending_state(self, signature: Signature) -> TaskState:
        """The PENDING record :meth:`set_state_pending` would store (for
        :meth:`Broker.publish_pending`, which stores it along with the message)."""
        return self._state(signature, State.PENDING.value)

    def set_states_pending(self, signatures: Sequence[Signature]) -> None:
        """Store PENDING for several tasks (groups), in one round trip where the store allows."""
        now = datetime.now(timezone.utc)
        ttl = self._ttl()
        self._store_states(
            [
                TaskState(task_uuid=s.uuid, state=State.PENDING.value, task_name=s.name, created_at=now, ttl=ttl)
                for s in signatures
            ]
        )

    def set_state_received(self, signature: Signature) -> None:
        """Store RECEIVED (the worker took the message)."""
        self._set(signature, State.RECEIVED.value)

    def set_state_started(self, signature: Signature) -> None:
        """Store STARTED (the task function is about to run)."""
        self._set(signature, State.STARTED.value)

    def set_state_received_started(self, signature: Signature) -> None:
        """Store RECEIVED then STARTED, in one round trip where the store batches (see
        :meth:`_store_states_unconfirmed`)."""
        now = datetime.now(timezone.utc)
        ttl = self._ttl()
        uuid, name = signature.uuid, signature.name
        self._store_states_unconfirmed(
            [
                TaskState(task_uuid=uuid, state=State.RECEIVED.value, task_name=name, created_at=now, ttl=ttl),
                TaskState(task_uuid=uuid, state=State.STARTED.value, task_name=name, created_at=now, ttl=ttl),
            ]
        )

    def set_state_retry(self, signature: Signature) -> None:
        """Store RETRY (the task failed and was re-sent for later)."""
        self._set(signature, State.RETRY.value)

    def set_state_success(self, signature: Signature, results: list[TaskResult]) -> None:
        """Store SUCCESS with the task's typed results."""
        self._set(signature, State.SUCCESS.value, results=results)

    def set_state_success_then(
        self, signature: Signature, results: list[TaskResult], then: Callable[[BaseException | None], None]
    ) -> None:
        """Store SUCCESS, then report the outcome: ``then(None)`` once it is stored, or
        ``then(error)`` when it could not be. The worker acknowledges the message from ``then``,
        so the acknowledgement still follows the store. The default stores synchronously
        (:meth:`set_state_success`) and calls ``then`` before returning; stores that batch writes
        override it to call ``then`` later, from the thread that sent the batch, once the store
        has confirmed the write, so the task thread does not wait for it."""
        try:
            self.set_state_success(signature, results)
        except Exception as exc:  # noqa: BLE001 - reported to the caller through ``then``
            then(exc)
            return
        then(None)

    def set_state_failure(self, signature: Signature, error: str) -> None:
        """Store FAILURE with the error string."""
        self._set(signature, State.FAILURE.value, error=error)

    def get_state(self, task_uuid: str) -> TaskState | None:
        """The stored state, or None when nothing is stored (unknown, expired or evicted)."""
        return self._load_state(task_uuid)

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

    def group_task_states(self, group_uuid: str, group_task_count: int) -> list[TaskState]:
        """The states of the group's tasks in group order (missing ones as PENDING)."""
        meta = self._load_group(group_uuid)
        if meta is None:
            return []
        states = self._load_states(meta.task_uuids)
        return [
            s if s is not None else TaskState(task_uuid=u, state=State.PENDING.value)
            for u, s in zip(meta.task_uuids, states)
        ]

    def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        """True when every task of the group is SUCCESS or FAILURE."""
        meta = self._load_group(group_uuid)
        if meta is None:
            return False
        states = self._load_states(meta.task_uuids)
        done = sum(1 for s in states if s is not None and s.is_completed)
        return done == group_task_count or (done == len(meta.task_uuids) and done > 0)

    def trigger_chord(self, group_uuid: str) -> bool:
        """True exactly once per group: the caller that gets True sends the chord callback."""
        return self._mark_chord_triggered(group_uuid)

    def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        """The group's metadata, or None."""
        return self._load_group(group_uuid)

    def purge_state(self, task_uuid: str) -> None:
        """Delete a task's state."""
        self._delete(task_uuid)

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


class Lock(ABC):
    """A distributed lock with expiry, used by the periodic scheduler.

    Each instance is one owner (a random token); :meth:`release` and :meth:`extend` act only on
    keys this instance holds.
    """

    #: Config section (YAML mapping) this transport owns.
    config_section: ClassVar[str | None] = None

    def __init__(self, url: str, config: Config) -> None:
        self.url = url
        self.config = config
        from uuid import uuid4  # here, not at import: ``uuid`` brings ``platform`` (Python < 3.12)

        self.owner = uuid4().hex

    @abstractmethod
    def acquire(self, key: str, ttl: timedelta) -> bool:
        """Take ``key`` for ``ttl`` if nobody holds it (or the holder's ttl ran out).

        :returns: True when this owner now holds the key.
        """

    @abstractmethod
    def release(self, key: str) -> bool:
        """Release ``key`` if this owner holds it. :returns: True when released."""

    def extend(self, key: str, ttl: timedelta) -> bool:
        """Extend ``key`` to ``ttl`` from now if this owner holds it. :returns: True if extended."""
        raise NotImplementedError(f"{type(self).__name__} cannot extend locks")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""


def describe_capabilities(obj: type[Broker] | type[Backend] | type[Lock]) -> Mapping[str, object]:
    """The capability attributes of a transport class, for ``machinery plugins`` and the suite."""
    return {
        k: getattr(obj, k)
        for k in dir(obj)
        if k.startswith(("supports_", "redeliver", "persistent")) and not callable(getattr(obj, k))
    }
