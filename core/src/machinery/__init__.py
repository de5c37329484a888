"""machinery: a distributed task queue, a faithful and faster port of Go Machinery.

>>> from machinery import Server, Config, Signature, Arg
>>> server = Server(Config(broker="memory://", result_backend="memory://"))
>>> @server.task("add")
... def add(*args: int) -> int:
...     return sum(args)
"""

from __future__ import annotations

from machinery._hookimpl import hookimpl
from machinery.config import Config
from machinery.errors import (
    ArgumentTypeError,
    BackendError,
    BrokerError,
    ConfigError,
    DecodeError,
    MachineryError,
    PublishError,
    ResultTimeoutError,
    RetryTaskLater,
    TaskFailedError,
    TaskNotRegisteredError,
    UnknownSchemeError,
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
    "BackendError",
    "Broker",
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
    "MachineryError",
    "PublishError",
    "ResultTimeoutError",
    "RetryTaskLater",
    "Server",
    "Signature",
    "State",
    "TaskContext",
    "TaskFailedError",
    "TaskNotRegisteredError",
    "TaskResult",
    "TaskState",
    "UnknownSchemeError",
    "Worker",
    "__version__",
    "hookimpl",
]
