"""The fault suite's malformed-message generator (:func:`malformed_bodies`) and what each body
must come to. Import it from :mod:`machinery.testing.faults`."""

from __future__ import annotations

import json
import random
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from machinery.errors import DecodeError
from machinery.signature import decode_signature
from machinery.wire.fields import SIGNATURE

if TYPE_CHECKING:
    pass

__all__ = ["FuzzBody", "malformed_bodies"]

#: Task names the fuzz may address that are registered and harmless whatever their arguments
#: (no file paths, no sleeps, no retries): a decodable message naming one must run to a final state.
_SAFE_TASKS = ("add", "multiply", "echo", "raise_error", "record_error", "now")


# ---------------------------------------------------------------------------------------------
# The malformed-message generator
# ---------------------------------------------------------------------------------------------


@dataclass
class FuzzBody:
    """One generated message body and what the generator meant by it.

    :param kind: the family (``garbage``, ``truncated``, ``wrong_type``...).
    :param body: the bytes published.
    :param uuid: a UUID unique to this body when it is a well-formed one (else "").
    """

    kind: str
    body: bytes
    uuid: str = ""


def _good(rng: random.Random, uid: str, name: str | None = None) -> dict[str, Any]:
    return {
        "UUID": uid,
        "Name": name or rng.choice(_SAFE_TASKS),
        "RoutingKey": "",
        "ETA": None,
        "GroupUUID": "",
        "GroupTaskCount": 0,
        "Args": [{"Name": "", "Type": "int64", "Value": rng.randint(-5, 5)}],
        "Headers": {},
        "Priority": 0,
        "Immutable": False,
        "RetryCount": 0,
        "RetryTimeout": 0,
        "OnSuccess": None,
        "OnError": None,
        "ChordCallback": None,
        "BrokerMessageGroupId": "",
        "SQSReceiptHandle": "",
        "StopTaskDeletionOnError": False,
        "IgnoreWhenTaskNotRegistered": False,
    }


# Go's Signature fields (the codec's list) a fuzzed body gets junk in; SQSReceiptHandle is SQS bookkeeping.
_FIELDS = tuple(f for f in SIGNATURE.names() if f != SIGNATURE.sqs_receipt_handle)
_JUNK: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1.5,
    2**70,
    -(2**63) - 1,
    1e308,
    "",
    "x",
    "\ud800",
    [],
    [1, "a"],
    {},
    {"a": [None]},
    "NaN",
    "2020-13-45T99:99:99Z",
)
_BAD_ARGS: tuple[Any, ...] = (
    {"Type": "int64", "Value": "abc"},
    {"Type": "int8", "Value": 300},
    {"Type": "uint", "Value": -1},
    {"Type": "float64", "Value": "NaN"},
    {"Type": "bool", "Value": "yes"},
    {"Type": "[]int64", "Value": "x"},
    {"Type": "[]string", "Value": [1, 2]},
    {"Type": "[]byte", "Value": "%%%not base64"},
    {"Type": "complex128", "Value": 1},
    {"Type": "", "Value": 1},
    {"Type": 5, "Value": 1},
    {"Value": 1},
    {"Type": "string"},
    {"Type": "string", "Value": "\udc80lone"},
    {"Type": "int64", "Value": 2**80},
    {"Type": "float32", "Value": 1e300},
    "not an object",
    None,
    [1, 2],
)


def _fresh_uuid(i: int) -> str:
    return f"fuzz_{i}_{uuid.uuid4().hex[:8]}"


def malformed_bodies(n: int, seed: int = 17) -> list[FuzzBody]:
    """``n`` message bodies a worker must survive, reproducible from ``seed``.

    Families (roughly equal shares): random bytes; truncated Go signatures; JSON that is not
    an object; a signature with one field of a wrong type; bad argument types for a registered
    task; unknown task names (half asking to be dropped when not registered); lone surrogates
    in names, UUIDs, arguments and headers; an empty or missing UUID; nested junk (bad
    callbacks, deep nesting); huge values (long names, many arguments, large strings); and
    well-formed tasks with impossible but decodable values. The bodies a well-formed message
    has get a UUID of their own (:attr:`FuzzBody.uuid`).
    """
    rng = random.Random(seed)
    out: list[FuzzBody] = []

    def dump(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=rng.random() < 0.5, allow_nan=True).encode("utf-8", "surrogatepass")

    for i in range(n):
        family = i % 12
        uid = _fresh_uuid(i)
        if family == 0:
            out.append(FuzzBody("garbage", rng.randbytes(rng.randint(0, 300))))
        elif family == 1:
            full = dump(_good(rng, uid))
            out.append(FuzzBody("truncated", full[: rng.randint(0, len(full) - 1)]))
        elif family == 2:
            value = rng.choice(([1, 2], "task", 42, None, True, 3.5, [{"UUID": uid}], ""))
            out.append(FuzzBody("not_object", json.dumps(value).encode()))
        elif family == 3:
            sig = _good(rng, uid)
            sig[rng.choice(_FIELDS)] = rng.choice(_JUNK)
            out.append(FuzzBody("wrong_type", dump(sig), uid))
        elif family == 4:
            sig = _good(rng, uid, name=rng.choice(("add", "echo", "multiply")))
            sig["Args"] = [rng.choice(_BAD_ARGS) for _ in range(rng.randint(1, 3))]
            out.append(FuzzBody("bad_arg", dump(sig), uid))
        elif family == 5:
            sig = _good(rng, uid, name=f"no_such_task_{rng.randint(0, 10**6)}")
            sig["IgnoreWhenTaskNotRegistered"] = rng.random() < 0.5
            out.append(FuzzBody("unknown_name", dump(sig), uid))
        elif family == 6:
            sig = _good(rng, uid, name="echo")
            where = rng.choice(("Name", "UUID", "arg", "header", "group"))
            if where == "Name":
                sig["Name"] = "echo\ud800"
            elif where == "UUID":
                sig["UUID"] = uid + "\ud800"
            elif where == "arg":
                sig["Args"] = [{"Name": "", "Type": "string", "Value": "a\udfffb"}]
            elif where == "header":
                sig["Headers"] = {"k\ud800": "v", "v": "\udc00"}
            else:
                sig["GroupUUID"] = "\ud800"
            out.append(FuzzBody("lone_surrogate", dump(sig), uid))
        elif family == 7:
            sig = _good(rng, uid)
            if rng.random() < 0.7:
                sig["UUID"] = ""
            else:
                del sig["UUID"]
            out.append(FuzzBody("empty_uuid", dump(sig)))
        elif family == 8:
            sig = _good(rng, uid, name="add")
            junk = rng.choice(
                (
                    [{"Name": 5}],
                    [None],
                    "callback",
                    [{"UUID": "x", "Name": "add", "Args": "junk"}],
                    {"UUID": 1},
                    json.loads("[" * 50 + "]" * 50),
                )
            )
            sig[rng.choice(("OnSuccess", "OnError", "ChordCallback", "Headers"))] = junk
            out.append(FuzzBody("nested_junk", dump(sig), uid))
        elif family == 9:
            # nesting deeper than any decoder recurses
            depth = rng.choice((600, 2000, 5000))
            out.append(FuzzBody("deep_nesting", b'{"UUID":"' + uid.encode() + b'","Name":"add","Args":' + b"[" * depth))
        elif family == 10:
            sig = _good(rng, uid, name=rng.choice(("echo", "add")))
            what = rng.choice(("name", "args", "string", "header"))
            big = rng.random() < 0.02  # a few really large ones (beyond what some brokers take)
            if what == "name":
                sig["Name"] = "n" * (300_000 if big else rng.choice((1000, 5000)))
            elif what == "args":
                sig["Args"] = [{"Name": "", "Type": "int64", "Value": 1}] * (20_000 if big else 300)
            elif what == "string":
                sig["Args"] = [{"Name": "", "Type": "string", "Value": "v" * (300_000 if big else 4000)}]
            else:
                sig["Headers"] = {f"h{k}": "x" * 100 for k in range(3000 if big else 30)}
            out.append(FuzzBody("huge", dump(sig), uid))
        else:
            sig = _good(rng, uid, name=rng.choice(("add", "multiply")))
            sig["Args"] = [{"Name": "", "Type": "int64", "Value": 2**62} for _ in range(rng.randint(1, 4))]
            sig["Priority"] = rng.choice((0, 9, 255))
            sig["ETA"] = rng.choice((None, "2001-01-01T00:00:00Z"))
            out.append(FuzzBody("odd_values", dump(sig), uid))
    return out


#: A lone surrogate in a body: a ``\\udXXX`` escape, or its raw (CESU-8) bytes, which Python's
#: ``json.loads`` accepts from bytes.
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\xed[\xa0-\xbf]")


def _expected(fb: FuzzBody) -> str:
    """What a correct worker does with ``fb``: ``dead`` (not a task), ``run`` (a registered task
    with a sound UUID: a final state must be stored), ``unknown`` (not registered here),
    ``refuse`` (no UUID: must never run, nothing stored under the empty key), ``settle`` (a lone
    surrogate: dead-lettered, or run with it replaced as Go's decoder does, but never stuck),
    by the decoder of this version."""
    if fb.kind == "empty_uuid":
        return "refuse"
    if fb.kind == "lone_surrogate" or _SURROGATE.search(fb.body):
        return "settle"
    try:
        sig = decode_signature(fb.body)
    except DecodeError:
        return "dead"
    if sig.name not in _SAFE_TASKS:
        return "unknown"
    return "run" if sig.uuid == fb.uuid else "refuse"


def _cycles(fb: FuzzBody) -> bool:
    """True when a correct worker gives ``fb`` back for another worker for as long as none knows
    its name (Go's way with unknown names): it decodes, has a UUID, names no task registered
    here (a lone surrogate read as U+FFFD included) and does not ask to be dropped."""
    try:
        sig = decode_signature(fb.body)
    except DecodeError:
        return False
    return bool(sig.uuid) and sig.name not in _SAFE_TASKS and not sig.ignore_when_task_not_registered
