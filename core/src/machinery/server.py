"""The :class:`Server`: Go Machinery's façade over a task :class:`~machinery.task_registry.Registry`,
a :class:`~machinery.producer.Producer` (the ``send_*`` API), a broker, a backend and a lock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

from machinery.config import Config, redact_url
from machinery.errors import ConfigError, MachineryError
from machinery.plugins import PluginHost, get_plugin_host
from machinery.producer import Producer
from machinery.results import AsyncResult, ChainAsyncResult, ChordAsyncResult, GroupResult
from machinery.state import TaskState
from machinery.task import Task
from machinery.task_registry import F, Registry
from machinery.wire.model import Signature, sent_headers
from machinery.workflow import Chain, Chord, Group

if TYPE_CHECKING:
    from datetime import datetime

    from machinery.interfaces import Backend, Broker, Lock
    from machinery.ratelimit import RateLimit
    from machinery.schedule import PeriodicEntry
    from machinery.worker import Worker

__all__ = ["Server"]


class Server:
    """The main machinery object: configuration, registered tasks and transports.

    :param config: the configuration (default: ``Config()``, the embedded default transport).
    :param broker: a ready broker instance instead of one built from ``config.broker``.
    :param backend: a ready backend instance instead of one built from ``config.result_backend``.
    :param lock: a ready lock instance instead of one built from ``config.lock``.
    :param plugins: the plugin host (default: the process-wide one).
    :param registry: the task registry to use (default: a new, empty one); servers may share one.
    :raises UnknownSchemeError: a URL scheme no installed plugin serves.
    :raises ConfigError: a bad configuration value.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        broker: Broker | None = None,
        backend: Backend | None = None,
        lock: Lock | None = None,
        plugins: PluginHost | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.config = config if config is not None else Config()
        self.plugins = plugins or get_plugin_host()
        #: The registered tasks and periodic entries (what a worker looks tasks up in).
        self.registry = registry if registry is not None else Registry()
        self._broker = broker or self._make("broker", self.broker_url)
        assign = getattr(self._broker, "assign_server", None)  # the eager broker runs our tasks
        if assign is not None:
            assign(self)
        self._backend = backend or self._make("backend", self.backend_url)
        self._lock_obj = lock
        self._lock_guard = threading.Lock()
        #: Sends through this server's broker and backend (``send_*`` delegate to it).
        self.producer = Producer(self._broker, self._backend, self.plugins)

    def _bind(self, broker: Broker, backend: Backend, lock: Lock | None) -> None:
        """Use these transports from now on (the producer follows; its pre-publish handler stays).
        For :func:`machinery.testing.fixtures.use_transport`; not while a worker runs."""
        self._broker, self._backend, self._lock_obj = broker, backend, lock
        self.producer = Producer(broker, backend, self.plugins, self.producer.pre_publish)

    # -- transports ---------------------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        """The broker URL in effect."""
        return self.config.broker_url

    @property
    def backend_url(self) -> str:
        """The backend URL in effect: ``result_backend``, else the broker URL when its scheme
        also serves results, else the embedded default."""
        if self.config.result_backend:
            return self.config.result_backend
        url = self.broker_url
        sep = self.config.multiple_broker_separator
        if sep and sep in url:
            url = url.split(sep)[0]
        scheme = url.partition("://")[0].lower()
        if scheme in self.plugins.schemes("backend"):
            return url
        from machinery.config import default_url

        return default_url()

    @property
    def lock_url(self) -> str:
        """The lock URL in effect: ``lock``, else the backend's or broker's when it serves locks."""
        if self.config.lock:
            return self.config.lock
        locks = self.plugins.schemes("lock")
        for url in (self.backend_url, self.broker_url):
            if url.partition("://")[0].lower() in locks:
                return url
        from machinery.config import default_url

        return default_url()

    def _make(self, kind: Literal["broker", "backend", "lock"], url: str) -> Any:
        # the shared transport of (url, config) hands the role out, or its registered class builds it
        try:
            return self.plugins.make(kind, url, self.config)
        except MachineryError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(kind, f"{redact_url(url)}: {exc}") from exc

    @property
    def broker(self) -> Broker:
        """The broker."""
        return self._broker

    @property
    def backend(self) -> Backend:
        """The result backend."""
        return self._backend

    @property
    def lock(self) -> Lock:
        """The lock (created on first use, since only periodic tasks need it)."""
        if self._lock_obj is None:
            with self._lock_guard:
                if self._lock_obj is None:
                    self._lock_obj = self._make("lock", self.lock_url)
        return self._lock_obj

    def get_broker(self) -> Broker:
        """Go's ``GetBroker``."""
        return self._broker

    def get_backend(self) -> Backend:
        """Go's ``GetBackend``."""
        return self._backend

    def get_config(self) -> Config:
        """Go's ``GetConfig``."""
        return self.config

    def close(self) -> None:
        """Close the broker, backend and lock connections."""
        self._broker.close()
        self._backend.close()
        if self._lock_obj is not None:
            self._lock_obj.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tasks ----------------------------------------------------------------------------------

    def register_task(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        rate_limit: str | RateLimit | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
    ) -> Task:
        """Register ``fn`` under ``name`` (replacing an earlier registration of that name).

        :param rate_limit: at most this many starts per period across every worker sharing the
            backend: ``"100/s"``, ``"10/m"``, ``"1000/h"`` (see :mod:`machinery.ratelimit`).
        :param time_limit: hard time limit in seconds (docs/pools.md); None: the worker's default.
        :param soft_time_limit: soft time limit in seconds, raising
            :class:`~machinery.errors.SoftTimeLimitExceeded` inside the task.
        :raises TypeError: ``fn`` cannot be called with arguments from a message.
        :raises ValueError: a malformed ``rate_limit``.
        """
        return self.registry.register_task(
            name, fn, rate_limit=rate_limit, time_limit=time_limit, soft_time_limit=soft_time_limit
        )

    def register_tasks(self, tasks: Mapping[str, Callable[..., Any]]) -> None:
        """Register several tasks at once; nothing is registered if one is invalid."""
        self.registry.register_tasks(tasks)

    @overload
    def task(self, name: F) -> F: ...

    @overload
    def task(
        self,
        name: str | None = None,
        *,
        rate_limit: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        name: str | F | None = None,
        *,
        rate_limit: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
    ) -> F | Callable[[F], F]:
        """Decorator registering a function as a task, under ``name`` or its ``__name__``.

        ``@server.task`` and ``@server.task("add")`` both work; the function is returned as is.
        ``rate_limit="10/s"`` limits its starts across every worker (:meth:`register_task`);
        ``@server.task("crunch", time_limit=30, soft_time_limit=25)`` sets the task's time limits.
        """
        if callable(name):
            return self.registry.task(name)
        return self.registry.task(name, rate_limit=rate_limit, time_limit=time_limit, soft_time_limit=soft_time_limit)

    def get_registered_task(self, name: str) -> Task:
        """The registered task. :raises TaskNotRegisteredError: when unknown."""
        return self.registry.get(name)

    def is_task_registered(self, name: str) -> bool:
        """True when ``name`` is registered."""
        return name in self.registry.tasks

    def get_registered_task_names(self) -> list[str]:
        """The registered task names, sorted."""
        return self.registry.names()

    def set_pre_publish_handler(self, handler: Callable[[Signature], None] | None) -> None:
        """Call ``handler(signature)`` just before every publish (Go's ``SetPrePublishHandler``)."""
        self.producer.pre_publish = handler

    # -- sending (the producer's, under Go's names) ------------------------------------------------

    def send_task(self, signature: Signature) -> AsyncResult:
        """Store PENDING and publish one task.

        :raises PublishError: the broker did not accept it.
        :raises BackendError: the PENDING state could not be stored.
        """
        return self.producer.send(signature)

    def send_task_with_context(self, context: Mapping[str, Any], signature: Signature) -> AsyncResult:
        """``send_task`` carrying ``context`` (tracing ids, request ids...) in the headers."""
        signature.headers = {**signature.headers, **context}
        return self.send_task(signature)

    def send_group(self, group: Group, send_concurrency: int = 0) -> GroupResult:
        """Record the group, store PENDING for each member and publish them all.

        :param send_concurrency: how many publishing threads (0: one pipelined batch, which is
            fastest for brokers that batch).
        :returns: one :class:`AsyncResult` per member, in order.
        """
        return self.producer.send_group(group, send_concurrency)

    def send_group_with_context(
        self, context: Mapping[str, Any], group: Group, send_concurrency: int = 0
    ) -> GroupResult:
        """``send_group`` carrying ``context`` in every member's headers."""
        for s in group.tasks:
            s.headers = {**s.headers, **context}
        return self.send_group(group, send_concurrency)

    def send_chord(self, chord: Chord, send_concurrency: int = 0) -> ChordAsyncResult:
        """Send the chord's group; the callback is sent by the worker that completes the group."""
        sent_headers(chord.callback)  # Go's SendChord gives the callback {} headers too
        self.send_group(chord.group, send_concurrency)  # through send_group, which a subclass may wrap
        return ChordAsyncResult(chord.group.tasks, chord.callback, self._backend)

    def send_chord_with_context(
        self, context: Mapping[str, Any], chord: Chord, send_concurrency: int = 0
    ) -> ChordAsyncResult:
        """``send_chord`` carrying ``context`` in the headers."""
        for s in chord.group.tasks:
            s.headers = {**s.headers, **context}
        chord.callback.headers = {**chord.callback.headers, **context}
        return self.send_chord(chord, send_concurrency)

    def send_chain(self, chain: Chain) -> ChainAsyncResult:
        """Send the chain's first task; each next one is sent by the worker on success."""
        self.send_task(chain.tasks[0])  # through send_task, which a subclass may wrap
        return ChainAsyncResult(chain.tasks, self._backend)

    def send_chain_with_context(self, context: Mapping[str, Any], chain: Chain) -> ChainAsyncResult:
        """``send_chain`` carrying ``context`` in the headers of every task."""
        for s in chain.tasks:  # Go's SendChainWithContext: {} headers on every step
            s.headers = {**s.headers, **context}
        return self.send_chain(chain)

    def delay(self, name: str, *args: Any, eta: datetime | None = None, **options: Any) -> AsyncResult:
        """Shortcut: ``send_task(Signature(name, args=list(args), eta=eta, **options))``."""
        return self.send_task(Signature(name, args=list(args), eta=eta, **options))

    # -- inspection -----------------------------------------------------------------------------

    def get_pending_tasks(self, queue: str | None = None) -> list[Signature]:
        """Tasks waiting in ``queue`` (where the broker can list them)."""
        return self._broker.pending_tasks(queue)

    def get_delayed_tasks(self) -> list[Signature]:
        """Tasks held until their ETA (where the broker can list them)."""
        return self._broker.delayed_tasks()

    def get_state(self, task_uuid: str) -> TaskState | None:
        """The stored state of a task."""
        return self._backend.get_state(task_uuid)

    def revoke(self, *task_uuids: str, terminate: bool = False, expires_in: float | None = None) -> list[str]:
        """Revoke tasks: one that has not started never runs (its state becomes FAILURE with the
        error ``"revoked"`` when a worker takes its message); with ``terminate``, one that is
        running is stopped too (best effort for thread tasks). Every worker sees it within about
        half a second. See :mod:`machinery.revoke`.

        :param task_uuids: the tasks' UUIDs (a chain's or chord's result object revokes all its
            tasks: ``result.revoke()``).
        :param terminate: also stop running tasks.
        :param expires_in: seconds the revocation is kept (default: ``results_expire_in``).
        :returns: the UUIDs revoked.
        :raises NotImplementedError: the result backend cannot store revocations.
        """
        from machinery.revoke import revoke

        return revoke(self._backend, task_uuids, terminate=terminate, expires_in=expires_in)

    def async_result(self, task_uuid: str) -> AsyncResult:
        """An :class:`AsyncResult` for a task UUID (sent elsewhere, e.g. by a Go producer)."""
        return AsyncResult(task_uuid, self._backend)

    # -- workers --------------------------------------------------------------------------------

    def new_worker(self, consumer_tag: str = "", concurrency: int = 0, queue: str | None = None) -> Worker:
        """A worker consuming ``queue`` (default queue if None) with ``concurrency`` threads.

        ``concurrency=0`` means the default of 8 (Go's "unlimited" has no safe thread equivalent).
        """
        from machinery.worker import Worker

        return Worker(self, consumer_tag=consumer_tag, concurrency=concurrency, queue=queue)

    def new_custom_queue_worker(self, consumer_tag: str, concurrency: int, queue: str) -> Worker:
        """A worker for a custom queue (Go's ``NewCustomQueueWorker``)."""
        return self.new_worker(consumer_tag, concurrency, queue)

    # -- periodic ---------------------------------------------------------------------------------

    def register_periodic_task(self, spec: str, name: str, signature: Signature) -> None:
        """Send ``signature`` on the cron ``spec``; one send per tick across all schedulers.

        :raises CronSpecError: ``spec`` is invalid (the message quotes it).
        :raises ValueError: ``name`` is already registered.
        """
        from machinery.schedule import PeriodicEntry

        self.registry.add_periodic(PeriodicEntry.task(spec, name, signature, timezone=self.config.timezone))

    def register_periodic_group(self, spec: str, name: str, group: Group, send_concurrency: int = 0) -> None:
        """Send a group on the cron ``spec`` (fresh UUIDs every tick)."""
        from machinery.schedule import PeriodicEntry

        self.registry.add_periodic(
            PeriodicEntry.group(spec, name, group, send_concurrency, timezone=self.config.timezone)
        )

    def register_periodic_chain(self, spec: str, name: str, chain: Chain) -> None:
        """Send a chain on the cron ``spec`` (fresh UUIDs every tick)."""
        from machinery.schedule import PeriodicEntry

        self.registry.add_periodic(PeriodicEntry.chain(spec, name, chain, timezone=self.config.timezone))

    def register_periodic_chord(self, spec: str, name: str, chord: Chord, send_concurrency: int = 0) -> None:
        """Send a chord on the cron ``spec`` (fresh UUIDs every tick)."""
        from machinery.schedule import PeriodicEntry

        self.registry.add_periodic(
            PeriodicEntry.chord(spec, name, chord, send_concurrency, timezone=self.config.timezone)
        )

    @property
    def periodic_entries(self) -> list[PeriodicEntry]:
        """The registered periodic entries."""
        return self.registry.periodic_entries

    def __repr__(self) -> str:
        broker, backend = redact_url(self.broker_url), redact_url(self.backend_url)
        return f"<Server broker={broker} backend={backend} tasks={len(self.registry)}>"
