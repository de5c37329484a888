"""The task model: :class:`Signature` (Go's ``tasks.Signature``) and :class:`Arg` (``tasks.Arg``).

Plain Python objects; their JSON form is :mod:`machinery.wire.codec`'s business. Users import
them from :mod:`machinery` (or :mod:`machinery.signature`).
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from machinery.errors import ArgumentTypeError
from machinery.wire.gotypes import from_go, infer_type

__all__ = ["Arg", "Headers", "NullHeaders", "Signature", "args_of", "new_uuid", "sent_headers"]

Headers = dict[str, Any]


class Arg:
    """One typed task argument (Go's ``tasks.Arg``).

    ``Arg("int8", 300)`` raises :class:`~machinery.errors.ArgumentTypeError` at once: values are
    checked against their Go type when the argument is made, never wrapped around silently.

    :param type: a Go type name (``int64``, ``[]string``, ``[]byte``...); see :data:`GO_TYPES`.
    :param value: the value; converted to the Python form of ``type``.
    :param name: an optional argument name (Go's ``Arg.Name``, informational).
    """

    __slots__ = ("name", "type", "value")

    def __init__(self, type: str, value: Any, name: str = "") -> None:  # noqa: A002
        self.type = type
        self.value = from_go(type, value)
        self.name = name

    @classmethod
    def of(cls, value: Any, name: str = "") -> Arg:
        """An argument whose Go type is inferred from a Python value (see :func:`infer_type`)."""
        if isinstance(value, Arg):
            return value
        return cls(infer_type(value), value, name)

    @classmethod
    def _trusted(cls, type: str, value: Any, name: str = "") -> Arg:  # noqa: A002
        arg = object.__new__(cls)
        arg.type = type
        arg.value = value
        arg.name = name
        return arg

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Arg):
            return NotImplemented
        return (self.type, self.value, self.name) == (other.type, other.value, other.name)

    def __hash__(self) -> int:
        return hash((self.type, repr(self.value), self.name))

    def __repr__(self) -> str:
        if self.name:
            return f"Arg({self.type!r}, {self.value!r}, name={self.name!r})"
        return f"Arg({self.type!r}, {self.value!r})"


_uuid4: Callable[[], Any] | None = None


def new_uuid(prefix: str = "task_") -> str:
    """A new UUID with Go Machinery's prefix (``task_``, ``group_`` or ``chord_``)."""
    global _uuid4
    if _uuid4 is None:  # not at import: ``uuid`` brings ``platform`` (Python < 3.12)
        from uuid import uuid4

        _uuid4 = uuid4
    return prefix + str(_uuid4())


class NullHeaders(dict[str, Any]):
    """Headers that are Go's nil map: encoded as JSON ``null`` while empty.

    A new :class:`Signature` starts with them, as Go's ``NewSignature`` leaves ``Headers`` nil;
    sending it (``Server.send_task`` and the group, chord and ``..._with_context`` variants)
    makes them a plain ``{}`` as Go's ``tracing.HeadersWithSpan`` does. So callbacks and chain
    steps not yet sent carry ``"Headers":null`` and sent ones ``"Headers":{}``, as in Go.
    """

    __slots__ = ()


def sent_headers(sig: Signature) -> None:
    """Give ``sig`` Go's headers of a sent signature: a nil map becomes ``{}`` (``HeadersWithSpan``)."""
    if type(sig.headers) is NullHeaders:
        sig.headers = dict(sig.headers)


@dataclass(slots=True, eq=True)
class Signature:
    """One task invocation (Go's ``tasks.Signature``).

    Arguments may be :class:`Arg` instances or plain Python values, whose Go types are inferred.

    :param name: the registered task name.
    :param args: the arguments, in order.
    :param uuid: set by ``send_task`` when empty (``task_<uuid4>``).
    :param routing_key: queue or routing key; empty means the broker's default.
    :param eta: run no earlier than this time (a timezone-aware datetime; naive means UTC).
    :param headers: message headers (tracing context...), JSON values. Empty ones are Go's nil
        map (``"Headers":null``) until the signature is sent, then ``{}``, as in Go.
    :param priority: 0-255 message priority where the broker supports it.
    :param immutable: Go's ``Immutable``: this task does not pass its results on. When it
        succeeds, its results are *not* appended to its ``on_success`` callbacks' arguments (in a
        :class:`~machinery.workflow.Chain`, the next step runs with only its own arguments); the
        flag of the task that *finished* decides, not the callback's (Go's ``worker.go``). On a
        chord callback it means the members' results are not appended to it.
    :param retry_count: retries left on failure (Fibonacci back-off, Go semantics).
    :param retry_timeout: the current back-off in seconds (0 = start at 1 s).
    :param on_success: tasks sent when this one succeeds, receiving its results.
    :param on_error: tasks sent when this one fails, receiving the error string first.
    :param chord_callback: set on group members by :class:`~machinery.workflow.Chord`.
    :param group_uuid: set by :class:`~machinery.workflow.Group`.
    :param group_task_count: set by :class:`~machinery.workflow.Group`.
    :param broker_message_group_id: SQS FIFO message group id.
    :param sqs_receipt_handle: set by the SQS broker on receipt (Go compatibility).
    :param stop_task_deletion_on_error: keep the message on failure (SQS dead-letter queues).
    :param ignore_when_task_not_registered: drop, rather than requeue, when no worker knows the task.
    """

    name: str
    args: list[Arg] = field(default_factory=list)
    uuid: str = ""
    routing_key: str = ""
    eta: datetime | None = None
    group_uuid: str = ""
    group_task_count: int = 0
    headers: Headers = field(default_factory=NullHeaders)
    priority: int = 0
    immutable: bool = False
    retry_count: int = 0
    retry_timeout: int = 0
    on_success: list[Signature] = field(default_factory=list)
    on_error: list[Signature] = field(default_factory=list)
    chord_callback: Signature | None = None
    broker_message_group_id: str = ""
    sqs_receipt_handle: str = ""
    stop_task_deletion_on_error: bool = False
    ignore_when_task_not_registered: bool = False

    def __post_init__(self) -> None:
        args = self.args
        if args and not all(type(a) is Arg for a in args):
            self.args = [Arg.of(a) for a in args]
        elif type(args) is not list:
            self.args = list(args)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a signature needs a non-empty task name")
        if self.eta is not None and self.eta.tzinfo is None:
            self.eta = self.eta.replace(tzinfo=timezone.utc)
        if not 0 <= self.priority <= 255:
            raise ArgumentTypeError("uint8", self.priority, "priority must be in [0, 255]")

    def copy(self) -> Signature:
        """A deep copy: callbacks, arguments and headers are copied, down to their values."""
        return _copy.deepcopy(self)

    def set_immutable(self, immutable: bool = True) -> Signature:
        """Set :attr:`immutable` and return ``self``: this task's results are not passed to the
        tasks it triggers (``on_success``, the next step of a chain).

        ``Chain(add(1, 1).set_immutable(), add(5, 5), multiply(4))`` runs ``add(5, 5)`` without
        ``add(1, 1)``'s result, then ``multiply(4, 10)`` = 40, on Go and Python workers alike.
        """
        self.immutable = immutable
        return self

    def countdown(self, seconds: float) -> Signature:
        """Set :attr:`eta` to now plus ``seconds`` and return ``self`` (for chaining)."""
        self.eta = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        return self

    @property
    def arg_values(self) -> list[Any]:
        """The Python values of :attr:`args`."""
        return [a.value for a in self.args]


def args_of(values: Iterable[Any] | Sequence[Any]) -> list[Arg]:
    """Typed arguments for plain Python values (types inferred)."""
    return [Arg.of(v) for v in values]
