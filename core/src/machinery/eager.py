"""Eager mode: a sent task runs at once, in the caller's thread (Go Machinery's ``eager`` broker,
backend and lock; Celery's ``task_always_eager``).

``Config(eager=True)`` (YAML ``eager: true``, ``MACHINERY_EAGER=1``), or Go's naming
``broker: eager://`` and ``result_backend: eager://``, gives a server whose ``send_task``,
``send_group``, ``send_chain`` and ``send_chord`` return only once the work is done, with the
states stored in an in-process backend (``eager://``, unless ``result_backend`` names another)
and read through the usual :class:`~machinery.results.AsyncResult` API.

What runs is the worker's own code (:meth:`machinery.worker.Worker.process`): the message is
encoded and decoded as on the wire (as Go's eager broker does), arguments are checked against
the task's type hints, a failure with ``retry_count`` retries, ``on_success``/``on_error``
callbacks, chains and chords are sent, and each is run in turn. Unlike a real queue:

* ETAs, countdowns and retry back-offs are not waited for: a re-sent task runs at once (as in
  Go's eager broker), so a test never sleeps.
* Work sent while a task runs (a callback, the next chain step, a task sending a task) is
  queued and runs after the current task returns, in order, before the outermost ``send_*``
  returns; so a task must not wait for the result of a task it sends itself.
* An unregistered task name raises :class:`~machinery.errors.TaskNotRegisteredError` from
  ``send_task`` (a real worker would requeue it for another worker).

``eager://`` is a transport like ``memory://`` (:class:`EagerTransport`, registered by
:mod:`machinery.builtin.memory`): its backend and lock are the memory ones on stores of their
own, and its broker is :class:`EagerBroker`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.builtin.memory.backend import MemoryBackend
from machinery.builtin.memory.lock import MemoryLock
from machinery.builtin.memory.transport import MemoryTransport
from machinery.errors import PublishError, TaskNotRegisteredError
from machinery.interfaces import Broker, Delivery

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.server import Server
    from machinery.signature import Signature
    from machinery.worker import Worker

__all__ = ["EagerBackend", "EagerBroker", "EagerLock", "EagerTransport"]


class EagerBroker(Broker):
    """``eager://``: ``publish`` runs the task in the caller's thread (see the module doc)."""

    #: ETAs are accepted and ignored (the task runs at once), so the worker never re-delays.
    supports_native_delay: ClassVar[bool] = True
    redelivers_unacked: ClassVar[bool] = False
    supports_purge: ClassVar[bool] = False

    def __init__(self, url: str, config: Config, *, transport: EagerTransport | None = None) -> None:
        super().__init__(url, config)
        self.transport = EagerTransport.attach(self, url, config, transport)
        self._server: Server | None = None
        self._worker: Worker | None = None
        self._local = threading.local()

    def assign_server(self, server: Server) -> None:
        """Bind the server whose tasks run here (the server does it when it is built; Go's
        ``AssignWorker``)."""
        self._server = server
        self._worker = None

    def _the_worker(self, server: Server) -> Worker:
        if self._worker is None:
            self._worker = server.new_worker("eager", 1)
        return self._worker

    def publish(self, body: bytes, signature: Signature) -> None:
        """Run the task now (or, when called from a running task, once it returns).

        :raises PublishError: the broker is not bound to a server.
        :raises TaskNotRegisteredError: no task of that name is registered.
        """
        from machinery.signature import decode_signature

        server = self._server
        if server is None:
            raise PublishError("the eager broker runs tasks in the caller: build it through a Server")
        sig = decode_signature(body)  # the wire round trip, as Go's eager broker does
        if not server.is_task_registered(sig.name):
            raise TaskNotRegisteredError(sig.name)
        pending: deque[Signature] | None = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append(sig)
            return
        self._local.pending = pending = deque([sig])
        try:
            worker = self._the_worker(server)
            while pending:
                s = pending.popleft()
                worker.process(s, server.get_registered_task(s.name))
        finally:
            self._local.pending = None

    def consume(self, queue: str, *, prefetch: int, stop: threading.Event) -> Iterator[Delivery]:
        """Nothing to consume: tasks run when sent. Returns once ``stop`` is set."""
        while not stop.is_set():
            time.sleep(0.1)
        yield from ()

    def ack(self, delivery: Delivery) -> None:
        """Nothing to acknowledge."""

    def nack(self, delivery: Delivery, *, requeue: bool = True, delay: float = 0.0) -> None:
        """Nothing to give back."""

    def close(self) -> None:
        """Stop the event loop thread the worker started for ``async def`` tasks, if any, and
        release the transport."""
        worker, self._worker = self._worker, None
        loop = worker._loop if worker is not None else None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if self.transport is not None:
            self.transport.release(self)


class EagerTransport(MemoryTransport):
    """``eager://``: the memory transport's stores under a namespace of their own, and
    :class:`EagerBroker` as the broker."""

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {
        "broker": "machinery.eager:EagerBroker",
        "backend": "machinery.eager:EagerBackend",
        "lock": "machinery.eager:EagerLock",
    }
    namespace: ClassVar[str] = "\x00eager/"


class EagerBackend(MemoryBackend):
    """``eager://`` results: the in-process memory backend, on the eager stores."""

    transport_class: ClassVar[type[MemoryTransport]] = EagerTransport


class EagerLock(MemoryLock):
    """``eager://`` lock: the in-process memory lock, on the eager stores."""

    transport_class: ClassVar[type[MemoryTransport]] = EagerTransport
