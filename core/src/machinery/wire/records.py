"""Stored records: task states and group metadata to and from Go Machinery's JSON.

Backends that store a record whole (Redis, memcache, SQLite...) use the byte codecs
(:func:`encode_task_state` / :func:`decode_task_state`, :func:`encode_group_meta` /
:func:`decode_group_meta`). Backends that store fields (DynamoDB items, MongoDB documents)
use the document mappers: :func:`task_state_to_document` / :func:`group_meta_to_document` give
the record as the JSON object Go's reader sees (Go field names, JSON values), and
:func:`task_state_from_mapping` / :func:`group_meta_from_mapping` read one back (Go names,
matched case-insensitively, or the lower-case BSON names Go's MongoDB backend writes).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from machinery.errors import ArgumentTypeError, DecodeError
from machinery.progress import Progress
from machinery.state import ZERO_TIME, GroupMeta, TaskResult, TaskState
from machinery.wire._jsontext import (
    Bad,
    FloatMarks,
    canonical_keys,
    encode_plain,
    finish,
    get_bool,
    get_int,
    get_str,
    loads,
    needs_slow,
    sorted_json,
)
from machinery.wire.fields import GROUP_META, TASK_STATE, folded
from machinery.wire.gotypes import BYTES_TYPES, format_time, from_go, parse_time

__all__ = [
    "decode_group_meta",
    "decode_task_state",
    "encode_group_meta",
    "encode_task_state",
    "group_meta_from_mapping",
    "group_meta_to_document",
    "task_state_from_mapping",
    "task_state_to_document",
]


def _result_to_wire(r: TaskResult, marks: FloatMarks) -> dict[str, Any]:
    v = r.value
    if r.type in BYTES_TYPES:
        import base64

        v = base64.b64encode(v).decode("ascii")
    elif needs_slow(v):
        v = sorted_json(v, marks)
    return {"Type": r.type, "Value": v}


def encode_task_state(state: TaskState) -> bytes:
    """A task state as Go Machinery's JSON (``TaskUUID``, ``TaskName``, ``State``...)."""
    marks = FloatMarks()
    obj: dict[str, Any] = {
        "TaskUUID": state.task_uuid,
        "TaskName": state.task_name,
        "State": str(state.state),
        "Results": [_result_to_wire(r, marks) for r in state.results] if state.results is not None else None,
        "Error": state.error,
        "CreatedAt": format_time(state.created_at),
        "TTL": state.ttl,
    }
    if state.progress is not None:  # Python only, an extra key Go's decoder ignores
        obj["Progress"] = state.progress.to_wire()
    return finish(obj, marks)


_STATE_FIELDS = TASK_STATE.names()
_STATE_FOLDED = folded(_STATE_FIELDS) | {
    "_id": "TaskUUID",
    "task_name": "TaskName",
    "created_at": "CreatedAt",
    "progress": "Progress",  # Python only (machinery.progress)
}
_STATE_SET = frozenset((*_STATE_FIELDS, TASK_STATE.progress))
_STATES = frozenset({"PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE"})


def _time_field(d: Mapping[str, Any], key: str) -> datetime:
    v = d.get(key)
    if v is None:
        return ZERO_TIME
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)
    if not isinstance(v, str):
        raise Bad(key, "expected an RFC 3339 string")
    try:
        return parse_time(v)
    except ValueError as exc:
        raise Bad(key, str(exc)) from None


def _progress(raw: Any) -> Progress | None:
    return None if raw is None else Progress.from_wire(raw)


def task_state_from_mapping(d: Mapping[str, Any]) -> TaskState:
    """Build a :class:`TaskState` from a decoded JSON object (Go or lower-case BSON names).

    :raises DecodeError: on a malformed record.
    """
    try:
        d = canonical_keys(dict(d), _STATE_FOLDED, _STATE_SET)
        st = get_str(d, "State", "")
        if st not in _STATES:
            raise Bad("State", f"unknown state {st!r}")
        raw_results = d.get("Results")
        results: list[TaskResult] | None = None
        if raw_results is not None:
            if not isinstance(raw_results, list):
                raise Bad("Results", "expected a list")
            results = []
            for i, r in enumerate(raw_results):
                if not isinstance(r, dict):
                    raise Bad(f"Results[{i}]", "expected an object")
                t = r.get("Type", r.get("type"))
                if not isinstance(t, str):
                    raise Bad(f"Results[{i}].Type", "missing or not a string")
                v = r.get("Value", r.get("value"))
                try:
                    v = from_go(t, v)
                except ArgumentTypeError:
                    pass  # unknown Go type from a Go worker (a struct...): keep the JSON value
                results.append(TaskResult(t, v))
        return TaskState(
            task_uuid=get_str(d, "TaskUUID", ""),
            state=st,
            task_name=get_str(d, "TaskName", ""),
            results=results,
            error=get_str(d, "Error", ""),
            created_at=_time_field(d, "CreatedAt"),
            ttl=get_int(d, "TTL", ""),
            progress=_progress(d.get("Progress")),
        )
    except Bad as bad:
        import json

        raise DecodeError(json.dumps(dict(d), default=str), f"task state {bad.path}: {bad.reason}") from None


def decode_task_state(raw: bytes | str) -> TaskState:
    """Decode a task state stored by Go or Python machinery.

    :raises DecodeError: on malformed JSON or fields.
    """
    data = loads(raw)
    if not isinstance(data, dict):
        raise DecodeError(raw, "task state: expected a JSON object")
    return task_state_from_mapping(data)


def encode_group_meta(meta: GroupMeta) -> bytes:
    """Group metadata as Go Machinery's JSON (``GroupUUID``, ``TaskUUIDs``...)."""
    obj = {
        "GroupUUID": meta.group_uuid,
        "TaskUUIDs": list(meta.task_uuids),
        "ChordTriggered": meta.chord_triggered,
        "Lock": meta.lock,
        "CreatedAt": format_time(meta.created_at),
        "TTL": meta.ttl,
    }
    return encode_plain(obj)


_GROUP_FIELDS = GROUP_META.names()
_GROUP_FOLDED = folded(_GROUP_FIELDS) | {
    "_id": "GroupUUID",
    "task_uuids": "TaskUUIDs",
    "chord_triggered": "ChordTriggered",
    "created_at": "CreatedAt",
}
_GROUP_SET = frozenset(_GROUP_FIELDS)


def group_meta_from_mapping(d: Mapping[str, Any]) -> GroupMeta:
    """Build a :class:`GroupMeta` from a decoded JSON object (Go or lower-case BSON names).

    :raises DecodeError: on a malformed record.
    """
    try:
        d = canonical_keys(dict(d), _GROUP_FOLDED, _GROUP_SET)
        uuids = d.get("TaskUUIDs")
        if uuids is None:
            uuids = []
        if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
            raise Bad("TaskUUIDs", "expected a list of strings")
        return GroupMeta(
            group_uuid=get_str(d, "GroupUUID", ""),
            task_uuids=list(uuids),
            chord_triggered=get_bool(d, "ChordTriggered", ""),
            lock=get_bool(d, "Lock", ""),
            created_at=_time_field(d, "CreatedAt"),
            ttl=get_int(d, "TTL", ""),
        )
    except Bad as bad:
        import json

        raise DecodeError(json.dumps(dict(d), default=str), f"group meta {bad.path}: {bad.reason}") from None


def decode_group_meta(raw: bytes | str) -> GroupMeta:
    """Decode group metadata stored by Go or Python machinery.

    :raises DecodeError: on malformed JSON or fields.
    """
    data = loads(raw)
    if not isinstance(data, dict):
        raise DecodeError(raw, "group meta: expected a JSON object")
    return group_meta_from_mapping(data)


def task_state_to_document(state: TaskState) -> dict[str, Any]:
    """The task state as the JSON object Go reads (``{"TaskUUID": ..., "Results": [...]}``).

    Exactly what :func:`encode_task_state` writes, parsed: Go field names, timestamps as RFC
    3339 text, byte results as base64, so a field-storing backend stores what Go would.
    :func:`task_state_from_mapping` is its inverse.

    :raises ArgumentTypeError: a result JSON cannot carry.
    """
    doc: dict[str, Any] = loads(encode_task_state(state))
    return doc


def group_meta_to_document(meta: GroupMeta) -> dict[str, Any]:
    """Group metadata as the JSON object Go reads; :func:`group_meta_from_mapping` is its inverse."""
    doc: dict[str, Any] = loads(encode_group_meta(meta))
    return doc
