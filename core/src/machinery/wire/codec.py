"""The task message codec: :class:`~machinery.wire.model.Signature` to and from Go Machinery's JSON.

Encoding is byte-compatible with Go's ``encoding/json``: compact separators, fields in Go
struct order (:data:`machinery.wire.fields.SIGNATURE`), map keys sorted, ``<``, ``>`` and ``&``
escaped as ``\\u003c``..., floats in Go's shortest form and timestamps in RFC 3339 with
trimmed fractions. Decoding accepts every message Go produces (fields missing from older
producers take their defaults, keys match case-insensitively as in Go) and rejects malformed
ones with :class:`~machinery.errors.DecodeError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from machinery.errors import ArgumentTypeError, DecodeError
from machinery.wire._jsontext import (
    Bad,
    FloatMarks,
    canonical_keys,
    finish,
    get_bool,
    get_int,
    get_str,
    loads,
    needs_slow,
    sorted_json,
)
from machinery.wire.fields import SIGNATURE, folded
from machinery.wire.gotypes import BYTES_TYPES, CONVERTERS, FLOAT_TYPES, JSON_TYPES, format_time, parse_time
from machinery.wire.model import Arg, NullHeaders, Signature

__all__ = ["decode_signature", "encode_signature"]

_SIG_FIELDS = SIGNATURE.names()
_SIG_FIELD_SET = frozenset(_SIG_FIELDS)
_SIG_FOLDED = folded(_SIG_FIELDS)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _arg_to_wire(arg: Arg, marks: FloatMarks) -> dict[str, Any]:
    t = arg.type
    v = arg.value
    if t in BYTES_TYPES:
        import base64

        v = base64.b64encode(v).decode("ascii")
    elif (t in FLOAT_TYPES or t in JSON_TYPES) and needs_slow(v):
        v = sorted_json(v, marks)
    return {"Name": arg.name, "Type": t, "Value": v}


def _sig_to_wire(sig: Signature, marks: FloatMarks) -> dict[str, Any]:
    headers: Any = sig.headers
    if headers and (len(headers) > 1 or needs_slow(headers)):
        headers = sorted_json(headers, marks)
    elif not headers and type(headers) is NullHeaders:
        headers = None
    return {
        "UUID": sig.uuid,
        "Name": sig.name,
        "RoutingKey": sig.routing_key,
        "ETA": format_time(sig.eta) if sig.eta is not None else None,
        "GroupUUID": sig.group_uuid,
        "GroupTaskCount": sig.group_task_count,
        "Args": [_arg_to_wire(a, marks) for a in sig.args] if sig.args else None,
        "Headers": headers,
        "Priority": sig.priority,
        "Immutable": sig.immutable,
        "RetryCount": sig.retry_count,
        "RetryTimeout": sig.retry_timeout,
        "OnSuccess": [_sig_to_wire(s, marks) for s in sig.on_success] if sig.on_success else None,
        "OnError": [_sig_to_wire(s, marks) for s in sig.on_error] if sig.on_error else None,
        "ChordCallback": _sig_to_wire(sig.chord_callback, marks) if sig.chord_callback else None,
        "BrokerMessageGroupId": sig.broker_message_group_id,
        "SQSReceiptHandle": sig.sqs_receipt_handle,
        "StopTaskDeletionOnError": sig.stop_task_deletion_on_error,
        "IgnoreWhenTaskNotRegistered": sig.ignore_when_task_not_registered,
    }


def encode_signature(sig: Signature) -> bytes:
    """The signature as Go Machinery's JSON message body (UTF-8 bytes)."""
    marks = FloatMarks()
    return finish(_sig_to_wire(sig, marks), marks)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _args_from_wire(raw: Any, path: str) -> list[Arg]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise Bad(path, f"expected a list of arguments, got {type(raw).__name__}")
    out = []
    new = object.__new__
    convs = CONVERTERS
    for i, item in enumerate(raw):
        if type(item) is not dict:
            raise Bad(f"{path}[{i}]", "expected an object with Type and Value")
        t = item.get("Type")
        if t is None:
            t = item.get("type")
        if type(t) is not str:
            raise Bad(f"{path}[{i}].Type", "missing or not a string")
        v = item["Value"] if "Value" in item else item.get("value")
        name = item.get("Name") or item.get("name") or ""
        conv = convs.get(t)
        if conv is None:
            raise Bad(f"{path}[{i}]", str(ArgumentTypeError(t, v, "unsupported type")))
        try:
            v = conv(v)
        except ArgumentTypeError as exc:
            raise Bad(f"{path}[{i}]", str(exc)) from None
        arg = new(Arg)
        arg.type = t
        arg.value = v
        arg.name = name if type(name) is str else ""
        out.append(arg)
    return out


def _sig_list(raw: Any, path: str) -> list[Signature]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise Bad(path, "expected a list of signatures")
    return [_sig_from_wire(s, f"{path}[{i}].") for i, s in enumerate(raw)]


def _sig_fast(d: dict[str, Any], path: str) -> Signature | None:
    """The common case, a well-formed message with Go's exact keys, without per-field calls.

    Returns None when anything is unusual; the careful path then decodes it or says what is wrong.
    """
    get = d.get
    name = get("Name")
    uuid = get("UUID", "")
    rk = get("RoutingKey", "")
    gu = get("GroupUUID", "")
    gtc = get("GroupTaskCount", 0)
    prio = get("Priority", 0)
    rc = get("RetryCount", 0)
    rt = get("RetryTimeout", 0)
    imm = get("Immutable", False)
    eta = get("ETA")
    headers = get("Headers")
    if not (
        type(name) is str
        and name
        and type(uuid) is str
        and type(rk) is str
        and type(gu) is str
        and type(gtc) is int
        and type(prio) is int
        and 0 <= prio <= 255
        and type(rc) is int
        and type(rt) is int
        and type(imm) is bool
        and eta is None
        and (headers is None or type(headers) is dict)
        and get("OnSuccess") is None
        and get("OnError") is None
        and get("ChordCallback") is None
    ):
        return None
    bm = get("BrokerMessageGroupId", "")
    sq = get("SQSReceiptHandle", "")
    stop = get("StopTaskDeletionOnError", False)
    ign = get("IgnoreWhenTaskNotRegistered", False)
    if not (type(bm) is str and type(sq) is str and type(stop) is bool and type(ign) is bool):
        return None
    sig = Signature.__new__(Signature)
    sig.name = name
    sig.args = _args_from_wire(get("Args"), f"{path}Args")
    sig.uuid = uuid
    sig.routing_key = rk
    sig.eta = None
    sig.group_uuid = gu
    sig.group_task_count = gtc
    sig.headers = headers if headers is not None else NullHeaders()
    sig.priority = prio
    sig.immutable = imm
    sig.retry_count = rc
    sig.retry_timeout = rt
    sig.on_success = []
    sig.on_error = []
    sig.chord_callback = None
    sig.broker_message_group_id = bm
    sig.sqs_receipt_handle = sq
    sig.stop_task_deletion_on_error = stop
    sig.ignore_when_task_not_registered = ign
    return sig


def _sig_from_wire(d: Any, path: str = "") -> Signature:
    if not isinstance(d, dict):
        raise Bad(path.rstrip(".") or "message", "expected a JSON object")
    if _SIG_FIELD_SET.issuperset(d):
        fast = _sig_fast(d, path)
        if fast is not None:
            return fast
    else:
        d = canonical_keys(d, _SIG_FOLDED, _SIG_FIELD_SET)
    name = get_str(d, "Name", path)
    if not name:
        raise Bad(f"{path}Name", "missing or empty task name")
    eta_raw = d.get("ETA")
    eta = None
    if eta_raw is not None:
        if not isinstance(eta_raw, str):
            raise Bad(f"{path}ETA", "expected an RFC 3339 string or null")
        try:
            eta = parse_time(eta_raw)
        except ValueError as exc:
            raise Bad(f"{path}ETA", str(exc)) from None
        if eta.year == 1:  # Go's zero time: no ETA
            eta = None
    headers = d.get("Headers")
    if headers is None:
        headers = NullHeaders()
    elif not isinstance(headers, dict):
        raise Bad(f"{path}Headers", "expected an object or null")
    cc = d.get("ChordCallback")
    sig = Signature.__new__(Signature)
    sig.name = name
    sig.args = _args_from_wire(d.get("Args"), f"{path}Args")
    sig.uuid = get_str(d, "UUID", path)
    sig.routing_key = get_str(d, "RoutingKey", path)
    sig.eta = eta
    sig.group_uuid = get_str(d, "GroupUUID", path)
    sig.group_task_count = get_int(d, "GroupTaskCount", path)
    sig.headers = headers
    sig.priority = get_int(d, "Priority", path, 0, 255)
    sig.immutable = get_bool(d, "Immutable", path)
    sig.retry_count = get_int(d, "RetryCount", path)
    sig.retry_timeout = get_int(d, "RetryTimeout", path)
    sig.on_success = _sig_list(d.get("OnSuccess"), f"{path}OnSuccess")
    sig.on_error = _sig_list(d.get("OnError"), f"{path}OnError")
    sig.chord_callback = _sig_from_wire(cc, f"{path}ChordCallback.") if cc is not None else None
    sig.broker_message_group_id = get_str(d, "BrokerMessageGroupId", path)
    sig.sqs_receipt_handle = get_str(d, "SQSReceiptHandle", path)
    sig.stop_task_deletion_on_error = get_bool(d, "StopTaskDeletionOnError", path)
    sig.ignore_when_task_not_registered = get_bool(d, "IgnoreWhenTaskNotRegistered", path)
    return sig


def decode_signature(raw: bytes | str | Mapping[str, Any]) -> Signature:
    """Decode a Go Machinery task message.

    :param raw: the message body (bytes or text) or an already parsed JSON object.
    :raises DecodeError: not JSON, not an object, a field of the wrong type, a bad argument.
    """
    data = raw if isinstance(raw, Mapping) else loads(raw)
    try:
        return _sig_from_wire(dict(data) if isinstance(data, Mapping) and not isinstance(data, dict) else data)
    except Bad as bad:
        import json

        src = raw if not isinstance(raw, Mapping) else json.dumps(raw, default=str)
        raise DecodeError(src, f"{bad.path}: {bad.reason}") from None
    except RecursionError:
        src = raw if not isinstance(raw, Mapping) else b"<mapping>"
        raise DecodeError(src, "signatures nested too deeply") from None
