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

from typing import ClassVar, Final

__all__ = [
    "ARG",
    "GROUP_META",
    "SIGNATURE",
    "TASK_RESULT",
    "TASK_STATE",
    "ArgFields",
    "GroupMetaFields",
    "SignatureFields",
    "TaskResultFields",
    "TaskStateFields",
    "folded",
]


class _Fields:
    """Common behaviour of the field-name tables: each public ``str`` class attribute is one
    field, in Go's struct order. (Plain classes, not dataclasses: making five dataclasses
    costs milliseconds at import, and every producer imports this module.)"""

    __slots__ = ()
    _fields: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._fields = {k: v for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, str)}

    def mapping(self) -> dict[str, str]:
        """Python attribute name -> Go field name, in Go's struct order."""
        return dict(self._fields)

    def names(self) -> tuple[str, ...]:
        """The Go field names, in Go's struct order (the order the codec writes them in)."""
        return tuple(self._fields.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._fields})"


class SignatureFields(_Fields):
    """Go's ``tasks.Signature`` field names (attribute: the :class:`Signature` attribute)."""

    uuid: Final = "UUID"
    name: Final = "Name"
    routing_key: Final = "RoutingKey"
    eta: Final = "ETA"
    group_uuid: Final = "GroupUUID"
    group_task_count: Final = "GroupTaskCount"
    args: Final = "Args"
    headers: Final = "Headers"
    priority: Final = "Priority"
    immutable: Final = "Immutable"
    retry_count: Final = "RetryCount"
    retry_timeout: Final = "RetryTimeout"
    on_success: Final = "OnSuccess"
    on_error: Final = "OnError"
    chord_callback: Final = "ChordCallback"
    broker_message_group_id: Final = "BrokerMessageGroupId"
    sqs_receipt_handle: Final = "SQSReceiptHandle"
    stop_task_deletion_on_error: Final = "StopTaskDeletionOnError"
    ignore_when_task_not_registered: Final = "IgnoreWhenTaskNotRegistered"


class ArgFields(_Fields):
    """Go's ``tasks.Arg`` field names."""

    name: Final = "Name"
    type: Final = "Type"
    value: Final = "Value"


class TaskResultFields(_Fields):
    """Go's ``tasks.TaskResult`` field names."""

    type: Final = "Type"
    value: Final = "Value"


class TaskStateFields(_Fields):
    """Go's ``tasks.TaskState`` field names.

    :attr:`progress` is Python's extra key (:mod:`machinery.progress`), written only when a task
    reported progress and ignored by Go's decoder; it is not among :meth:`names`.
    """

    task_uuid: Final = "TaskUUID"
    task_name: Final = "TaskName"
    state: Final = "State"
    results: Final = "Results"
    error: Final = "Error"
    created_at: Final = "CreatedAt"
    ttl: Final = "TTL"

    @property
    def progress(self) -> str:
        """``Progress``: the Python-only key of a state that reported progress."""
        return "Progress"


class GroupMetaFields(_Fields):
    """Go's ``tasks.GroupMeta`` field names."""

    group_uuid: Final = "GroupUUID"
    task_uuids: Final = "TaskUUIDs"
    chord_triggered: Final = "ChordTriggered"
    lock: Final = "Lock"
    created_at: Final = "CreatedAt"
    ttl: Final = "TTL"


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
