"""The Go field names of the wire format, as public constants.

A plugin that stores or inspects records field by field (a Lua script that flips
``ChordTriggered`` in place, a DynamoDB table keyed on ``TaskUUID``, a broker that reads
``RoutingKey`` without decoding the message) takes the names from here::

    from machinery.plugin import wire

    wire.SIGNATURE.routing_key      # "RoutingKey"
    wire.TASK_STATE.ttl             # "TTL"
    wire.GROUP_META.chord_triggered # "ChordTriggered"

Each constant maps the Python attribute name of the model (:class:`~machinery.signature.Signature`,
:class:`~machinery.state.TaskState`, :class:`~machinery.state.GroupMeta`...) to the Go struct
field name, and :meth:`~_Fields.names` gives them in Go's struct order, which is the order the
codec writes them in. The codec (:mod:`machinery.wire.codec`, :mod:`machinery.wire.records`)
is tested to write exactly these keys, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

__all__ = ["ARG", "GROUP_META", "SIGNATURE", "TASK_RESULT", "TASK_STATE", "folded"]


class _Fields:
    """Common behaviour of the field-name tables."""

    __slots__ = ()

    def names(self) -> tuple[str, ...]:
        """The Go field names, in Go's struct order (the order the codec writes them in)."""
        return tuple(str(n) for n in astuple(self))  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class SignatureFields(_Fields):
    """Go's ``tasks.Signature`` field names (attribute: the :class:`Signature` attribute)."""

    uuid: str = "UUID"
    name: str = "Name"
    routing_key: str = "RoutingKey"
    eta: str = "ETA"
    group_uuid: str = "GroupUUID"
    group_task_count: str = "GroupTaskCount"
    args: str = "Args"
    headers: str = "Headers"
    priority: str = "Priority"
    immutable: str = "Immutable"
    retry_count: str = "RetryCount"
    retry_timeout: str = "RetryTimeout"
    on_success: str = "OnSuccess"
    on_error: str = "OnError"
    chord_callback: str = "ChordCallback"
    broker_message_group_id: str = "BrokerMessageGroupId"
    sqs_receipt_handle: str = "SQSReceiptHandle"
    stop_task_deletion_on_error: str = "StopTaskDeletionOnError"
    ignore_when_task_not_registered: str = "IgnoreWhenTaskNotRegistered"


@dataclass(frozen=True, slots=True)
class ArgFields(_Fields):
    """Go's ``tasks.Arg`` field names."""

    name: str = "Name"
    type: str = "Type"
    value: str = "Value"


@dataclass(frozen=True, slots=True)
class TaskResultFields(_Fields):
    """Go's ``tasks.TaskResult`` field names."""

    type: str = "Type"
    value: str = "Value"


@dataclass(frozen=True, slots=True)
class TaskStateFields(_Fields):
    """Go's ``tasks.TaskState`` field names.

    :attr:`progress` is Python's extra key (:mod:`machinery.progress`), written only when a task
    reported progress and ignored by Go's decoder; it is not among :meth:`names`.
    """

    task_uuid: str = "TaskUUID"
    task_name: str = "TaskName"
    state: str = "State"
    results: str = "Results"
    error: str = "Error"
    created_at: str = "CreatedAt"
    ttl: str = "TTL"

    @property
    def progress(self) -> str:
        """``Progress``: the Python-only key of a state that reported progress."""
        return "Progress"


@dataclass(frozen=True, slots=True)
class GroupMetaFields(_Fields):
    """Go's ``tasks.GroupMeta`` field names."""

    group_uuid: str = "GroupUUID"
    task_uuids: str = "TaskUUIDs"
    chord_triggered: str = "ChordTriggered"
    lock: str = "Lock"
    created_at: str = "CreatedAt"
    ttl: str = "TTL"


SIGNATURE = SignatureFields()
"""Field names of a task message."""
ARG = ArgFields()
"""Field names of one typed argument."""
TASK_RESULT = TaskResultFields()
"""Field names of one typed result."""
TASK_STATE = TaskStateFields()
"""Field names of a stored task state."""
GROUP_META = GroupMetaFields()
"""Field names of stored group metadata."""


def folded(names: tuple[str, ...]) -> dict[str, str]:
    """Lower-cased name -> Go name: Go's decoder matches field names case-insensitively."""
    return {n.lower(): n for n in names}
