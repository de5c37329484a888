"""The three transport contracts: :class:`Broker`, :class:`Backend` and :class:`Lock`.

A plugin implements a handful of abstract methods; everything Go-visible (the six
``set_state_*`` calls, ``group_completed``, ``trigger_chord``...) is concrete and built on
those primitives (the backend's are ``@final``, in :mod:`machinery.backend_ops`).
Capabilities are declared as class attributes, never discovered by failure: the core reads
them (for example to emulate ETA on a broker without native delay) and so does the
conformance suite (to skip with a stated reason).

Delivery is **at-least-once**: a broker must keep a delivered message until the worker calls
:meth:`Broker.ack`, which it does only after the task's final state is stored; a worker that
dies before that must cause the message to be delivered again.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.backend_ops import BackendOps, Completion

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.revoke import Revocation
    from machinery.signature import Signature
    from machinery.transport import Transport

__all__ = ["Backend", "Broker", "Completion", "DeadLetter", "Delivery", "Lock"]


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

    #: The :class:`~machinery.transport.Transport` that handed this role out (None for a role
    #: registered alone); a broker and a backend with the same one may fuse sends.
    transport: Transport | None = None

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

    @classmethod
    def default_read_ahead(cls, concurrency: int) -> int:
        """The read-ahead a worker of ``concurrency`` threads uses on this broker unless
        ``worker_prefetch`` sets one: messages taken beyond its concurrency while tasks are quick
        (:mod:`machinery.dispatch`). 1 by default; a broker whose every fetch is costly (one
        write transaction) may ask for more."""
        return 1

    def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Return messages this consumer was handed and never started (what a worker read ahead,
        when it stops), in the order they were handed out. A broker that can put them back at the
        head of their queue does, so they keep their place; the default gives each back with
        ``nack(requeue=True)``."""
        for d in deliveries:
            self.nack(d, requeue=True)

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


class Backend(BackendOps):
    """Stores task states, results and group metadata.

    A plugin implements six primitives (``_store_state``, ``_load_state``, ``_store_group``,
    ``_load_group``, ``_mark_chord_triggered``, ``_delete``) and may override three more for
    speed: :meth:`~machinery.backend_ops.BackendOps._store_states` (one round trip, or a
    deferred, batched write answered through a :class:`~machinery.backend_ops.Completion`),
    :meth:`~machinery.backend_ops.BackendOps._load_states` and :meth:`wait_for` (block instead
    of polling). The Go-visible operations are defined once, ``@final``, in
    :class:`~machinery.backend_ops.BackendOps`; where a store behaves differently it declares
    a capability (:attr:`stores_ttl`, :attr:`counts_completed`...). The Python-only features
    below (worker registry, revocations, rate limits) are implemented only where declared.
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

    #: The :class:`~machinery.transport.Transport` that handed this role out (None for a role
    #: registered alone); a broker and a backend with the same one may fuse sends.
    transport: Transport | None = None

    def __init__(self, url: str, config: Config) -> None:
        self.url = url
        self.config = config

    def close(self) -> None:
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


class Lock(ABC):
    """A distributed lock with expiry, used by the periodic scheduler.

    Each instance is one owner (a random token); :meth:`release` and :meth:`extend` act only on
    keys this instance holds.
    """

    #: Config section (YAML mapping) this transport owns.
    config_section: ClassVar[str | None] = None

    #: The :class:`~machinery.transport.Transport` that handed this role out (None for a role
    #: registered alone); a broker and a backend with the same one may fuse sends.
    transport: Transport | None = None

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
