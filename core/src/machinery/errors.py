"""The one error tree of machinery.

Every error the core or a plugin raises on purpose derives from :class:`MachineryError`.
Plugins translate their client library's exceptions (``raise BrokerConnectionError(...) from
exc``), so a worker never has to know about ``redis.ConnectionError`` or ``pika`` exceptions.
Errors carry attributes as well as a message.
"""

from __future__ import annotations

# Nothing is imported at run time (the CLI's ``--help`` loads this module); type checkers treat
# ``TYPE_CHECKING`` as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import timedelta

__all__ = [
    "ArgumentTypeError",
    "BackendConnectionError",
    "BackendError",
    "BrokerAuthenticationError",
    "BrokerConnectionError",
    "BrokerError",
    "ConfigError",
    "DecodeError",
    "LockError",
    "LockNotAcquired",
    "MachineryError",
    "PluginLoadError",
    "PublishError",
    "ResultTimeoutError",
    "RetryTaskLater",
    "SoftTimeLimitExceeded",
    "StateNotFoundError",
    "TaskFailedError",
    "TaskNotRegisteredError",
    "TaskRevoked",
    "TimeLimitExceeded",
    "UnknownSchemeError",
    "WorkerLostError",
]


class MachineryError(Exception):
    """Base class of every error machinery raises on purpose."""


class ConfigError(MachineryError, ValueError):
    """A configuration key has a bad value or is unknown.

    :param key: the offending key, as the user wrote it (``results_expire_in``, ``redis.max_idle``).
    :param reason: what is wrong with it.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"config key {key!r}: {reason}")


class UnknownSchemeError(MachineryError, ValueError):
    """No installed plugin serves a URL scheme.

    :param scheme: the scheme asked for (``sqs``).
    :param kind: ``broker``, ``backend`` or ``lock``.
    :param installed: the schemes that are installed for that kind.
    :param hint: the distribution that probably serves the scheme, if known.
    """

    def __init__(self, scheme: str, kind: str, installed: list[str], hint: str | None) -> None:
        self.scheme = scheme
        self.kind = kind
        self.installed = installed
        self.hint = hint
        msg = (
            f"no plugin registered for {scheme}:// as a {kind}; "
            f"installed {kind} schemes: {', '.join(installed) or '(none)'}"
        )
        if hint:
            msg += f". Try: pip install {hint}"
        super().__init__(msg)


class PluginLoadError(MachineryError):
    """An installed plugin failed to load; the others still load.

    :param entry_point: the entry point's name.
    :param distribution: the distribution that provides it, with its version.
    :param reason: the error the import raised.
    """

    def __init__(self, entry_point: str, distribution: str, reason: str) -> None:
        self.entry_point = entry_point
        self.distribution = distribution
        self.reason = reason
        from machinery import __version__

        super().__init__(
            f"plugin {entry_point!r} from {distribution} failed to load (machinery-core {__version__}): {reason}"
        )


class DecodeError(MachineryError, ValueError):
    """A message or stored record is not valid machinery JSON.

    :param raw: the bytes that could not be decoded (kept so nothing is lost).
    :param reason: what is wrong, naming the field where possible.
    """

    def __init__(self, raw: bytes | str, reason: str) -> None:
        self.raw = raw if isinstance(raw, bytes) else raw.encode("utf-8", "replace")
        self.reason = reason
        preview = self.raw[:120].decode("utf-8", "replace")
        super().__init__(f"cannot decode message: {reason} (message starts {preview!r})")


class ArgumentTypeError(MachineryError, TypeError):
    """An argument value does not fit its declared type.

    :param arg_type: the Go type name (``int8``) or Python annotation.
    :param value: the offending value.
    :param reason: what is wrong (out of range, wrong kind...).
    """

    def __init__(self, arg_type: str, value: object, reason: str) -> None:
        self.arg_type = arg_type
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"argument of type {arg_type!r} with value {shown}: {reason}")


class TaskNotRegisteredError(MachineryError, LookupError):
    """A task name is not registered on the server.

    :param name: the task name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"task {name!r} is not registered")


class BrokerError(MachineryError):
    """A broker operation failed."""


class BrokerConnectionError(BrokerError, ConnectionError):
    """The broker could not be reached or the connection dropped."""


class BrokerAuthenticationError(BrokerConnectionError):
    """The broker refused the credentials (wrong password or user, missing permission).

    Not a transient fault: trying again cannot help until the configuration or the server's
    users change. A worker says so and tries again only after
    :attr:`Worker.auth_retry_delay <machinery.worker.Worker.auth_retry_delay>` (60 s).
    """


class PublishError(BrokerError):
    """A message could not be published (not confirmed, rejected or connection lost).

    :param task_uuid: the task whose message was not published.
    """

    def __init__(self, message: str, task_uuid: str = "") -> None:
        self.task_uuid = task_uuid
        super().__init__(message)


class BackendError(MachineryError):
    """A result backend operation failed.

    :param retryable: False when trying again cannot succeed: a record bigger than the store
        accepts, say. A worker redelivers the message of a task whose state could not be
        stored, hoping for a store that works again; for an error that is not retryable it
        stores FAILURE (with this error's message) instead and acknowledges the message. Subclasses
        may set it as a class attribute. Default True.
    """

    #: False when the same operation can never succeed (see the class docstring).
    retryable: bool = True

    def __init__(self, *args: object, retryable: bool | None = None) -> None:
        super().__init__(*args)
        if retryable is not None:
            self.retryable = retryable


class BackendConnectionError(BackendError, ConnectionError):
    """The result backend could not be reached or the connection dropped."""


class StateNotFoundError(BackendError, LookupError):
    """A task state that existed is gone (expired or lost by a cache backend).

    :param task_uuid: the task whose state is missing.
    """

    def __init__(self, task_uuid: str, reason: str = "no state stored") -> None:
        self.task_uuid = task_uuid
        super().__init__(f"task {task_uuid}: {reason}")


class LockError(MachineryError):
    """A lock operation failed."""


class LockNotAcquired(LockError):
    """A lock is held by somebody else.

    :param key: the lock key.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"lock {key!r} is held by another owner")


class TaskFailedError(MachineryError):
    """Raised by ``AsyncResult.get`` when the task ended in FAILURE.

    :param task_uuid: the failed task.
    :param error: the error string stored by the worker (Go's ``TaskState.Error``).
    """

    def __init__(self, task_uuid: str, error: str) -> None:
        self.task_uuid = task_uuid
        self.error = error
        super().__init__(f"task {task_uuid} failed: {error}")


class ResultTimeoutError(MachineryError, TimeoutError):
    """``AsyncResult.get`` gave up waiting.

    :param task_uuid: the task waited for.
    :param timeout: seconds waited.
    :param state: the last state seen (``PENDING``, ``STARTED``...), or ``None``.
    """

    def __init__(self, task_uuid: str, timeout: float, state: str | None) -> None:
        self.task_uuid = task_uuid
        self.timeout = timeout
        self.state = state
        super().__init__(f"timed out after {timeout:g}s waiting for task {task_uuid} (last state: {state or 'none'})")


class RetryTaskLater(MachineryError):
    """Raise from a task to run it again later (Go's ``ErrRetryTaskLater``).

    The task's state becomes RETRY and it is re-sent with ``ETA = now + retry_in``. Unlike the
    ``RetryCount`` back-off, this does not decrement the retry counter.

    :param message: why the task wants to be retried.
    :param retry_in: the delay, as a :class:`~datetime.timedelta` or seconds.
    """

    def __init__(self, message: str, retry_in: timedelta | float) -> None:
        from datetime import timedelta

        self.message = message
        self.retry_in = retry_in if isinstance(retry_in, timedelta) else timedelta(seconds=retry_in)
        super().__init__(f"{message} (retry in {self.retry_in.total_seconds():g}s)")

    def __reduce__(self) -> tuple[type[RetryTaskLater], tuple[str, timedelta]]:
        # pickles (the processes pool sends it from a child) with its own arguments
        return (type(self), (self.message, self.retry_in))


class SoftTimeLimitExceeded(MachineryError):
    """Raised *inside* a task that runs past its soft time limit, so it can clean up (and even
    store a result) before the hard limit. Threads pool: an asynchronous exception raised in the
    task's thread at its next Python instruction; asyncio: raised at the ``await`` the task is
    suspended on; processes pool: raised by a SIGUSR1 handler in the child process.

    :param limit: the soft limit, in seconds.
    """

    def __init__(self, limit: float = 0.0) -> None:
        self.limit = limit
        super().__init__(f"soft time limit exceeded ({limit:g}s)" if limit else "soft time limit exceeded")

    def __reduce__(self) -> tuple[type[SoftTimeLimitExceeded], tuple[float]]:
        return (type(self), (self.limit,))


class TimeLimitExceeded(MachineryError):
    """A task ran past its hard time limit: its state is FAILURE with this message (``"time
    limit exceeded (30s)"``), or RETRY when it has retries left. Not raised inside the task.

    :param limit: the hard limit, in seconds.
    """

    def __init__(self, limit: float = 0.0) -> None:
        self.limit = limit
        super().__init__(f"time limit exceeded ({limit:g}s)" if limit else "time limit exceeded")

    def __reduce__(self) -> tuple[type[TimeLimitExceeded], tuple[float]]:
        return (type(self), (self.limit,))


class WorkerLostError(MachineryError):
    """The child process running a task (processes pool) died before it answered: ``os._exit``,
    a segfault, the OOM killer, a SIGKILL.

    :param reason: how it died (``"killed by SIGKILL"``, ``"exit code 3"``).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the worker's child process died while running the task ({reason})")

    def __reduce__(self) -> tuple[type[WorkerLostError], tuple[str]]:
        return (type(self), (self.reason,))


class TaskRevoked(BaseException):
    """Raised inside a running task that was revoked with ``terminate=True`` (a thread task gets
    it asynchronously, ``PyThreadState_SetAsyncExc``; see :mod:`machinery.revoke`).

    A ``BaseException``, like :class:`KeyboardInterrupt`, so that a task's ``except Exception``
    does not swallow it. The worker stores FAILURE with the error ``"revoked"``.
    """
