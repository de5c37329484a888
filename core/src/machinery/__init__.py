"""machinery: a distributed task queue, a faithful and faster port of Go Machinery.

>>> from machinery import Server, Config, Signature, Arg
>>> server = Server(Config(broker="memory://", result_backend="memory://"))
>>> @server.task("add")
... def add(*args: int) -> int:
...     return sum(args)

The public names are imported on first use (PEP 562 module ``__getattr__``), so
``import machinery`` costs almost nothing and a producer never loads the worker.
"""

import sys as _sys

# Not ``from typing import TYPE_CHECKING``: importing ``typing`` costs more than the rest of this
# module. Type checkers (mypy, pyright) treat a ``TYPE_CHECKING`` name as true; Python sees False.
TYPE_CHECKING = False
if TYPE_CHECKING:  # what type checkers and IDEs see; at run time these load on first access
    from machinery._hookimpl import hookimpl
    from machinery.config import Config
    from machinery.errors import (
        ArgumentTypeError,
        BackendConnectionError,
        BackendError,
        BrokerAuthenticationError,
        BrokerConnectionError,
        BrokerError,
        ConfigError,
        DecodeError,
        LockError,
        LockNotAcquired,
        MachineryError,
        PluginLoadError,
        PublishError,
        ResultTimeoutError,
        RetryTaskLater,
        SoftTimeLimitExceeded,
        StateNotFoundError,
        TaskFailedError,
        TaskNotRegisteredError,
        TaskRevoked,
        TimeLimitExceeded,
        UnknownSchemeError,
        WorkerLostError,
    )
    from machinery.interfaces import Backend, Broker, Delivery, Lock
    from machinery.results import AsyncResult, ChainAsyncResult, ChordAsyncResult, GroupResult
    from machinery.server import Server
    from machinery.signature import Arg, Headers, Signature
    from machinery.state import GroupMeta, State, TaskResult, TaskState
    from machinery.task import TaskContext
    from machinery.worker import Worker
    from machinery.workflow import Chain, Chord, Group

__version__ = "0.1.0"

__all__ = [
    "Arg",
    "ArgumentTypeError",
    "AsyncResult",
    "Backend",
    "BackendConnectionError",
    "BackendError",
    "Broker",
    "BrokerAuthenticationError",
    "BrokerConnectionError",
    "BrokerError",
    "Chain",
    "ChainAsyncResult",
    "Chord",
    "ChordAsyncResult",
    "Config",
    "ConfigError",
    "DecodeError",
    "Delivery",
    "Group",
    "GroupMeta",
    "GroupResult",
    "Headers",
    "Lock",
    "LockError",
    "LockNotAcquired",
    "MachineryError",
    "PluginLoadError",
    "PublishError",
    "ResultTimeoutError",
    "RetryTaskLater",
    "Server",
    "Signature",
    "SoftTimeLimitExceeded",
    "State",
    "StateNotFoundError",
    "TaskContext",
    "TaskFailedError",
    "TaskNotRegisteredError",
    "TaskResult",
    "TaskRevoked",
    "TaskState",
    "TimeLimitExceeded",
    "UnknownSchemeError",
    "Worker",
    "WorkerLostError",
    "__version__",
    "hookimpl",
]

#: Public name -> the submodule that defines it.
_LAZY = {
    "hookimpl": "_hookimpl",
    "Config": "config",
    "ArgumentTypeError": "errors",
    "BackendConnectionError": "errors",
    "BrokerAuthenticationError": "errors",
    "BrokerConnectionError": "errors",
    "LockError": "errors",
    "LockNotAcquired": "errors",
    "PluginLoadError": "errors",
    "StateNotFoundError": "errors",
    "BackendError": "errors",
    "BrokerError": "errors",
    "ConfigError": "errors",
    "DecodeError": "errors",
    "MachineryError": "errors",
    "PublishError": "errors",
    "ResultTimeoutError": "errors",
    "RetryTaskLater": "errors",
    "SoftTimeLimitExceeded": "errors",
    "TimeLimitExceeded": "errors",
    "TaskFailedError": "errors",
    "TaskNotRegisteredError": "errors",
    "TaskRevoked": "errors",
    "UnknownSchemeError": "errors",
    "WorkerLostError": "errors",
    "Backend": "interfaces",
    "Broker": "interfaces",
    "Delivery": "interfaces",
    "Lock": "interfaces",
    "AsyncResult": "results",
    "ChainAsyncResult": "results",
    "ChordAsyncResult": "results",
    "GroupResult": "results",
    "Server": "server",
    "Arg": "signature",
    "Headers": "signature",
    "Signature": "signature",
    "GroupMeta": "state",
    "State": "state",
    "TaskResult": "state",
    "TaskState": "state",
    "TaskContext": "task",
    "Worker": "worker",
    "Chain": "workflow",
    "Chord": "workflow",
    "Group": "workflow",
}

#: Submodules that ``import machinery`` used to load, so ``machinery.signature`` and the like
#: still resolve as attributes without an explicit ``import machinery.signature``.
_SUBMODULES = frozenset(
    {
        "_hookimpl",
        "config",
        "errors",
        "events",
        "hookspecs",
        "interfaces",
        "plugins",
        "results",
        "retry",
        "server",
        "signature",
        "state",
        "task",
        "wire",
        "worker",
        "workflow",
    }
)


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None and name not in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # ``__import__`` rather than importlib: it is the import statement's path, so the import
    # shows in ``python -X importtime`` like any other.
    __import__(f"{__name__}.{module or name}")
    value = _sys.modules[f"{__name__}.{module or name}"]
    if module is not None:
        value = getattr(value, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
