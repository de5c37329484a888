"""Every hook a machinery plugin can implement.

Transport hooks *register*, as plain data, a :class:`~machinery.transport.Transport` per URL
scheme (``machinery_register_transports``), or role classes one by one (the older
``machinery_register_brokers/backends/locks``, still served); behaviour lives in the ABCs of
:mod:`machinery.interfaces`. Lifecycle hooks are broadcast observers that return None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from machinery.events import TaskEvent, WorkerEvent
    from machinery.interfaces import Backend, Broker
    from machinery.plugins import Register
    from machinery.signature import Signature
    from machinery.transport import TransportRegistry

__all__ = ["hookspec"]

hookspec = pluggy.HookspecMarker("machinery")


@hookspec
def machinery_register_transports(registry: TransportRegistry) -> None:
    """Declare transports: one :class:`~machinery.transport.Transport` per URL scheme, serving
    some of the broker, backend and lock roles.

    Called once per process, on the first URL resolution, for every plugin. Call
    ``registry.add(scheme, "module:Class", roles={...}, section=..., env={...}, aliases=(...))``
    once per transport: everything but the class is plain data, so reading a configuration
    (its sections, its environment variables) imports nothing of the plugin. The class is
    imported when a URL with one of its schemes is used. A scheme claimed by two distributions
    is an error naming both.

    :param registry: the registry to add transports to.
    """


@hookspec
def machinery_register_brokers(register: Register) -> None:
    """Register broker classes for URL schemes.

    Called once per process, on the first URL resolution (plugins load lazily), for every
    plugin. Call ``register(scheme, cls)`` once per scheme; ``cls`` is a
    :class:`~machinery.interfaces.Broker` subclass or a ``"module:Class"`` string imported only
    when a URL with that scheme is used. A scheme claimed by two distributions is an error
    naming both.

    :param register: the registration callback.
    """


@hookspec
def machinery_register_backends(register: Register) -> None:
    """Register result backend classes for URL schemes.

    Called once per process, on the first URL resolution, like
    :func:`machinery_register_brokers` and with the same rules; ``cls`` is a
    :class:`~machinery.interfaces.Backend` subclass or a ``"module:Class"`` string.

    :param register: the registration callback.
    """


@hookspec
def machinery_register_locks(register: Register) -> None:
    """Register lock classes for URL schemes.

    Called once per process, on the first URL resolution, like
    :func:`machinery_register_brokers` and with the same rules; ``cls`` is a
    :class:`~machinery.interfaces.Lock` subclass or a ``"module:Class"`` string.

    :param register: the registration callback.
    """


@hookspec(firstresult=True)
def machinery_fused_publisher(broker: Broker, backend: Backend) -> Callable[[bytes, Signature], None] | None:
    """A function that stores a task's PENDING state in ``backend`` and publishes its message
    through ``broker`` in one round trip, for a broker and a backend of this plugin that share
    a connection (the same Redis server and database, say); None for any other pair.

    For plugins that register role classes one by one: a plugin registering a
    :class:`~machinery.transport.Transport` declares this as the transport's
    ``publish_with_state`` capability instead, which the producer asks first when its broker
    and backend come from the same transport.

    Asked once per producer, on its first send; the first non-None answer wins. Without one,
    the producer stores PENDING, then publishes. The function is called with the encoded
    message and its signature; it must store PENDING before any worker can take the message,
    and raise :class:`~machinery.errors.BackendError` when PENDING was refused and
    :class:`~machinery.errors.PublishError` when the message was.

    :param broker: the producer's broker.
    :param backend: the producer's result backend.
    """


@hookspec
def machinery_task_received(event: TaskEvent) -> None:
    """A worker took a task message and stored RECEIVED.

    Called in the worker thread that will run the task, once per delivery (so again after a
    redelivery). Must be quick and must not raise: exceptions are logged and ignored.

    :param event: what happened; ``event.signature`` is the decoded task.
    """


@hookspec
def machinery_task_started(event: TaskEvent) -> None:
    """A task function is about to run (STARTED is stored).

    Called in the task's worker thread, once per attempt.

    :param event: what happened.
    """


@hookspec
def machinery_task_succeeded(event: TaskEvent) -> None:
    """A task returned and SUCCESS is stored.

    Called in the task's worker thread, before its callbacks are sent.

    :param event: ``event.results`` holds the typed results, ``event.runtime`` the seconds taken.
    """


@hookspec
def machinery_task_failed(event: TaskEvent) -> None:
    """A task failed for good (FAILURE is stored), or could not run at all.

    Called in the task's worker thread; ``event.exc`` is the exception, ``event.error`` the
    string stored, ``event.traceback`` the formatted traceback when the task raised.

    :param event: what happened.
    """


@hookspec
def machinery_task_retried(event: TaskEvent) -> None:
    """A task failed and was re-sent for a later attempt (RETRY is stored).

    Called in the task's worker thread; ``event.retry_in`` holds the delay in seconds.

    :param event: what happened.
    """


@hookspec
def machinery_worker_started(event: WorkerEvent) -> None:
    """A worker began consuming.

    Called once per :meth:`~machinery.worker.Worker.launch`, in the launching thread, after
    its task threads started (a metrics plugin starts its HTTP server here).

    :param event: the worker's consumer tag, queue, concurrency and redacted URLs;
        ``event.worker`` is the :class:`~machinery.worker.Worker` itself (its server, broker
        and :meth:`~machinery.worker.Worker.info`).
    """


@hookspec
def machinery_worker_stopped(event: WorkerEvent) -> None:
    """A worker stopped consuming and finished its in-flight tasks.

    Called once per launch, from the thread that ran the worker, after its task threads ended.

    :param event: the worker's consumer tag, queue, concurrency and redacted URLs.
    """


@hookspec
def machinery_before_publish(signature: Signature) -> None:
    """A task message is about to be encoded and published; the hook may edit its headers.

    Called in the publishing thread for every message: ``send_task``, each member of a group,
    the follow-ups a worker sends (chain steps, callbacks, chord callbacks) and retries. It runs
    after Go's pre-publish handler and before the routing key is adjusted and the signature
    encoded, so changes to ``signature.headers`` travel with the message (tracing context,
    publish time...). Keep header values JSON scalars: Go reads ``Headers`` as a map. An
    exception fails the send, so keep it simple and catch your own errors.

    :param signature: the signature being sent (its ``uuid`` is set).
    """


@hookspec
def machinery_after_publish(signature: Signature, error: BaseException | None) -> None:
    """A message was published, or its publication failed.

    Called in the publishing thread once per :func:`machinery_before_publish` (for a group,
    after the whole batch), with ``error`` set when the broker or backend refused it (the
    exception is then raised to the sender). Must not raise.

    :param signature: the signature sent.
    :param error: why it was not published, or None.
    """


@hookspec
def machinery_cli_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """Add options to a ``machinery`` command (``--metrics-port`` on ``worker``, say).

    Called once per command of the parser built by ``machinery``'s ``main`` (not by
    ``build_parser()`` alone), for every plugin. Prefix ``dest`` names with the plugin's name to
    avoid clashes; read the values in :func:`machinery_cli_started`.

    :param command: the command's name (``"worker"``, ``"send"``...).
    :param parser: its argument parser.
    """


@hookspec
def machinery_cli_commands(add_command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add commands to ``machinery`` (``machinery dashboard``, say).

    Called once while ``main`` builds its parser. ``add_command(name, help)`` returns a
    sub-parser that already has the common options (``--config``, ``--broker``...); set
    ``func`` with ``parser.set_defaults(func=callable)``, where ``callable(args)`` returns the
    exit status. A name already taken is an error naming it.

    :param add_command: makes the sub-parser of a new command.
    """


@hookspec
def machinery_cli_started(command: str, args: argparse.Namespace) -> None:
    """A ``machinery`` command line was parsed and logging set up; the command runs next.

    Called once per run, in the main thread, before the command (so before a worker starts).

    :param command: the command's name.
    :param args: the parsed arguments, including those added by :func:`machinery_cli_arguments`.
    """
