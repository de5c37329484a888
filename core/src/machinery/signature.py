"""Signatures, typed arguments and the Go wire codec.

This module is the only place where Go type names (``int64``, ``[]string``...) and Go field
names of the wire format (``UUID``, ``RoutingKey``, ``TaskUUID``...) appear. Everything else in
machinery works with Python values and these classes.

Encoding is byte-compatible with Go's ``encoding/json``: compact separators, fields in Go
struct order, map keys sorted, ``<``, ``>`` and ``&`` escaped as ``\\u003c``..., floats in Go's
shortest form and timestamps in RFC 3339 with nanosecond-style trimmed fractions. Decoding
accepts every message Go produces (fields missing from older producers take their defaults,
keys match case-insensitively as in Go) and rejects malformed ones with
:class:`~machinery.errors.DecodeError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from machinery.errors import ArgumentTypeError, DecodeError
from machinery.state import ZERO_TIME, GroupMeta, TaskResult, TaskState

if TYPE_CHECKING:
    import re

__all__ = [
    "GO_TYPES",
    "Arg",
    "Headers",
    "Signature",
    "decode_group_meta",
    "decode_signature",
    "decode_task_state",
    "encode_group_meta",
    "encode_signature",
    "encode_task_state",
    "format_time",
    "from_go",
    "infer_type",
    "new_uuid",
    "parse_time",
    "result_type",
    "to_go",
]

Headers = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Go type names and conversion
# ---------------------------------------------------------------------------------------------

_INT_RANGES: dict[str, tuple[int, int]] = {
    "int": (-(2**63), 2**63 - 1),
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint": (0, 2**64 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38

#: Python extension types: JSON values a Python worker accepts as they are. A Go worker cannot
#: consume them, so keep them for Python-to-Python traffic.
_JSON_TYPES = frozenset({"map[string]interface {}", "[]interface {}", "interface {}"})


def _int(type_name: str) -> Callable[[Any], int]:
    lo, hi = _INT_RANGES[type_name]

    def conv(value: Any) -> int:
        if type(value) is not int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ArgumentTypeError(type_name, value, "not an integer")
            value = int(value)  # int subclasses (IntEnum...)
        n: int = value
        if not lo <= n <= hi:
            raise ArgumentTypeError(type_name, n, f"out of range [{lo}, {hi}]")
        return n

    return conv


def _float(type_name: str) -> Callable[[Any], float]:
    def conv(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArgumentTypeError(type_name, value, "not a number")
        try:
            f = float(value)
        except (ValueError, OverflowError):
            raise ArgumentTypeError(type_name, value, "not a number") from None
        if not math.isfinite(f):
            raise ArgumentTypeError(type_name, value, "not a finite number (JSON has no NaN/Inf)")
        if type_name == "float32" and abs(f) > _FLOAT32_MAX:
            raise ArgumentTypeError(type_name, value, "out of float32 range")
        return f

    return conv


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ArgumentTypeError("bool", value, "not a boolean")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ArgumentTypeError("string", value, "not a string")
    return value


def _bytes(type_name: str) -> Callable[[Any], bytes]:
    def conv(value: Any) -> bytes:
        if value is None:
            return b""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, str):
            import base64
            import binascii

            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ArgumentTypeError(type_name, value, "not valid base64") from None
        if isinstance(value, list):
            u8 = _SCALARS["uint8"]
            return bytes(u8(v) for v in value)
        raise ArgumentTypeError(type_name, value, "not bytes, base64 or a list of uint8")

    return conv


def _json_value(value: Any) -> Any:
    return value


_SCALARS: dict[str, Callable[[Any], Any]] = {
    **{name: _int(name) for name in _INT_RANGES},
    "float32": _float("float32"),
    "float64": _float("float64"),
    "bool": _bool,
    "string": _string,
}


def _slice(type_name: str, elem: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def conv(value: Any) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise ArgumentTypeError(type_name, value, "not a list")
        try:
            return [elem(v) for v in value]
        except ArgumentTypeError as exc:
            raise ArgumentTypeError(type_name, value, f"element {exc.value!r}: {exc.reason}") from None

    return conv


_CONVERTERS: dict[str, Callable[[Any], Any]] = dict(_SCALARS)
for _name, _conv in list(_SCALARS.items()):
    _CONVERTERS["[]" + _name] = _slice("[]" + _name, _conv)
_CONVERTERS["[]byte"] = _bytes("[]byte")
_CONVERTERS["[]uint8"] = _bytes("[]uint8")
for _name in _JSON_TYPES:
    _CONVERTERS[_name] = _json_value

#: Every Go type name machinery understands (Go Machinery's ``typesMap`` plus the JSON types).
GO_TYPES: frozenset[str] = frozenset(_CONVERTERS)

_BYTES_TYPES = frozenset({"[]byte", "[]uint8"})
_FLOAT_TYPES = frozenset({"float32", "float64", "[]float32", "[]float64"})


def from_go(type_name: str, value: Any) -> Any:
    """Convert a wire value of Go type ``type_name`` to its Python value, with range checks.

    :param type_name: a Go type name from :data:`GO_TYPES`.
    :param value: the JSON-decoded value.
    :returns: ``int``, ``float``, ``bool``, ``str``, ``bytes`` or a list of those.
    :raises ArgumentTypeError: unknown type name, wrong kind of value or out of range.
    """
    conv = _CONVERTERS.get(type_name)
    if conv is None:
        raise ArgumentTypeError(type_name, value, "unsupported type")
    return conv(value)


def to_go(type_name: str, value: Any) -> Any:
    """Convert a Python value to the JSON value Go expects for ``type_name``.

    Only byte slices change form (to base64 text); other values pass through.
    """
    if type_name in _BYTES_TYPES:
        import base64

        return base64.b64encode(value).decode("ascii")
    return value


def infer_type(value: Any) -> str:
    """The Go type name for a plain Python value.

    ``int`` → ``int64`` (``uint64`` above the int64 range), ``float`` → ``float64``,
    ``str`` → ``string``, ``bool`` → ``bool``, ``bytes`` → ``[]byte``, a homogeneous list →
    ``[]T`` (non-negative ints beyond int64 make ``[]uint64``), a ``dict`` →
    ``map[string]interface {}``, other lists → ``[]interface {}``.

    :raises ArgumentTypeError: for values JSON cannot carry.
    """
    t = type(value)
    if t is int:
        if -(2**63) <= value < 2**63:
            return "int64"
        if 0 <= value < 2**64:
            return "uint64"
        raise ArgumentTypeError("int64", value, "integer does not fit in 64 bits")
    if t is str:
        return "string"
    if t is float:
        return "float64"
    if t is bool:
        return "bool"
    if t in (bytes, bytearray, memoryview):
        return "[]byte"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]interface {}"
        if any(v is None for v in value):
            return "[]interface {}"  # JSON null elements: only the generic slice can carry them
        kinds = {infer_type(v) for v in value}
        if len(kinds) == 1:
            (kind,) = kinds
            if not kind.startswith("[]") and kind in _SCALARS:
                return "[]" + kind
        if kinds == {"int64", "uint64"} and all(v >= 0 for v in value):
            return "[]uint64"  # e.g. [0, 2**64 - 1]: Go reads it back as []uint64
        if kinds <= {"int64", "float64"}:
            return "[]float64"
        return "[]interface {}"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, int):  # int subclasses (IntEnum...)
        return infer_type(int(value))
    if isinstance(value, str):
        return "string"
    raise ArgumentTypeError(type(value).__name__, value, "cannot be sent as a task argument (JSON only)")


def result_type(value: Any) -> str:
    """The Go type name a Go worker would report for a result value (``[]uint8`` for bytes)."""
    t = infer_type(value)
    return "[]uint8" if t == "[]byte" else t


# ---------------------------------------------------------------------------------------------
# Arg and Signature
# ---------------------------------------------------------------------------------------------


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


class _NullHeaders(dict[str, Any]):
    """Headers that are Go's nil map: encoded as JSON ``null`` while empty.

    A new :class:`Signature` starts with them, as Go's ``NewSignature`` leaves ``Headers`` nil;
    sending it (``Server.send_task`` and the group, chord and ``..._with_context`` variants)
    makes them a plain ``{}`` as Go's ``tracing.HeadersWithSpan`` does. So callbacks and chain
    steps not yet sent carry ``"Headers":null`` and sent ones ``"Headers":{}``, as in Go.
    """

    __slots__ = ()


def sent_headers(sig: Signature) -> None:
    """Give ``sig`` Go's headers of a sent signature: a nil map becomes ``{}`` (``HeadersWithSpan``)."""
    if type(sig.headers) is _NullHeaders:
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
    headers: Headers = field(default_factory=_NullHeaders)
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
        """A deep copy (callbacks and args are copied, values are shared)."""
        return decode_signature(encode_signature(self))

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


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------

_TIME_PATTERN = r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z"
_time_re: re.Pattern[str] | None = None


def _time_match(text: str) -> re.Match[str] | None:
    # The pattern is compiled on first use, not at import (many processes never parse a time).
    global _time_re
    if _time_re is None:
        import re

        _time_re = re.compile(_TIME_PATTERN)
    return _time_re.match(text)


def format_time(dt: datetime) -> str:
    """RFC 3339 in UTC with a trimmed fraction, as Go's ``time.Time.MarshalJSON`` writes it."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    elif dt.utcoffset():
        dt = dt.astimezone(timezone.utc)
    s = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    if dt.microsecond:
        s += "." + f"{dt.microsecond:06d}".rstrip("0")
    return s + "Z"


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with up to nanosecond precision (truncated to microseconds).

    :raises ValueError: when ``text`` is not RFC 3339.
    """
    m = _time_match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second, frac, z, sign, oh, om = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    tz = timezone.utc
    if not z:
        offset = timedelta(hours=int(oh), minutes=int(om))
        tz = timezone(offset if sign == "+" else -offset)
    dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz)
    return dt if tz is timezone.utc else dt.astimezone(timezone.utc)


# ---------------------------------------------------------------------------------------------
# JSON text, Go style
# ---------------------------------------------------------------------------------------------


def _first_dumps(obj: Any) -> str:
    # ``json`` is imported, and the encoder made, on the first encode rather than at import.
    global _dumps
    import json

    _dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
    return _dumps(obj)


#: Compact JSON text (Go's separators; NaN and infinities refused).
_dumps: Callable[[Any], str] = _first_dumps


def _go_escape(text: str) -> str:
    # Go's encoder escapes these for safe embedding in HTML (SetEscapeHTML defaults to true).
    if "<" in text or ">" in text or "&" in text:
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text


def _go_float(x: float) -> str:
    """Go's ``strconv.FormatFloat(x, 'f' or 'e', -1, 64)`` choice as used by encoding/json."""
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    r = repr(x)
    a = abs(x)
    if 1e-6 <= a < 1e21:
        if "e" in r or "E" in r:
            from decimal import Decimal  # rare (|x| < 1e-4 or >= 1e16): not imported up front

            r = format(Decimal(r), "f")
        if r.endswith(".0"):
            r = r[:-2]
        return r
    mant, _, exp = r.partition("e")
    if mant.endswith(".0"):
        mant = mant[:-2]
    sign = "-" if exp.startswith("-") else "+"
    digits = exp.lstrip("+-").lstrip("0") or "0"
    if sign == "+" and len(digits) < 2:
        digits = "0" + digits  # Go keeps two exponent digits; it trims only "e-0N" to "e-N"
    return f"{mant}e{sign}{digits}"


class _FloatMarks:
    """Stand-ins for floats so the C JSON encoder can be used; swapped for Go text afterwards."""

    __slots__ = ("texts",)

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, x: float) -> str:
        self.texts.append(_go_float(x))
        return f"\x00F{len(self.texts) - 1}\x00"

    def apply(self, text: str) -> str:
        for i, t in enumerate(self.texts):
            text = text.replace(f'"\\u0000F{i}\\u0000"', t, 1)
        return text


def _sorted_json(value: Any, marks: _FloatMarks | None) -> Any:
    """Deep copy of a JSON value with map keys sorted (Go sorts map keys) and floats marked."""
    if isinstance(value, dict):
        return {k: _sorted_json(value[k], marks) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted_json(v, marks) for v in value]
    if marks is not None and type(value) is float:
        return marks.mark(value)
    return value


def _needs_slow(value: Any) -> bool:
    t = type(value)
    if t is float or t is dict:
        return True
    if t is list or t is tuple:
        return any(_needs_slow(v) for v in value)
    return False


def _arg_to_wire(arg: Arg, marks: _FloatMarks) -> dict[str, Any]:
    t = arg.type
    v = arg.value
    if t in _BYTES_TYPES:
        import base64

        v = base64.b64encode(v).decode("ascii")
    elif (t in _FLOAT_TYPES or t in _JSON_TYPES) and _needs_slow(v):
        v = _sorted_json(v, marks)
    return {"Name": arg.name, "Type": t, "Value": v}


def _sig_to_wire(sig: Signature, marks: _FloatMarks) -> dict[str, Any]:
    headers: Any = sig.headers
    if headers and (len(headers) > 1 or _needs_slow(headers)):
        headers = _sorted_json(headers, marks)
    elif not headers and type(headers) is _NullHeaders:
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


def _utf8(text: str) -> bytes:
    """JSON text as UTF-8. A lone surrogate (a Python str can hold one: ``os.fsdecode`` of a bad
    file name, a ``"\\ud800"`` escape...) is not Unicode; it is written ``\\ufffd``, as Go's
    encoder writes what is not valid UTF-8, never an error (surrogates only occur inside
    JSON strings, where the escape is valid)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _surrogates().sub("\\\\ufffd", text).encode("utf-8")


_surrogate_re: re.Pattern[str] | None = None


def _surrogates() -> re.Pattern[str]:
    global _surrogate_re
    if _surrogate_re is None:
        import re

        _surrogate_re = re.compile("[\ud800-\udfff]")
    return _surrogate_re


def _finish(obj: Any, marks: _FloatMarks) -> bytes:
    try:
        text = _dumps(obj)
    except (TypeError, ValueError) as exc:
        raise ArgumentTypeError("json", obj, f"not JSON-encodable: {exc}") from None
    if marks.texts:
        text = marks.apply(text)
    return _utf8(_go_escape(text))


def encode_signature(sig: Signature) -> bytes:
    """The signature as Go Machinery's JSON message body (UTF-8 bytes)."""
    marks = _FloatMarks()
    return _finish(_sig_to_wire(sig, marks), marks)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

_SIG_FIELDS = (
    "UUID",
    "Name",
    "RoutingKey",
    "ETA",
    "GroupUUID",
    "GroupTaskCount",
    "Args",
    "Headers",
    "Priority",
    "Immutable",
    "RetryCount",
    "RetryTimeout",
    "OnSuccess",
    "OnError",
    "ChordCallback",
    "BrokerMessageGroupId",
    "SQSReceiptHandle",
    "StopTaskDeletionOnError",
    "IgnoreWhenTaskNotRegistered",
)
_SIG_FIELD_SET = frozenset(_SIG_FIELDS)
_SIG_FOLDED = {f.lower(): f for f in _SIG_FIELDS}


class _Bad(Exception):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason


def _canonical_keys(d: dict[str, Any], folded: Mapping[str, str], known: frozenset[str]) -> dict[str, Any]:
    # Go's decoder matches field names case-insensitively; unknown keys are ignored.
    if all(k in known for k in d):
        return d
    out: dict[str, Any] = {}
    for k, v in d.items():
        canon = folded.get(k.lower()) if isinstance(k, str) else None
        if canon is not None and (canon not in out or k == canon):
            out[canon] = v
    return out


def _get_str(d: Mapping[str, Any], key: str, path: str) -> str:
    v = d.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _Bad(f"{path}{key}", f"expected a string, got {type(v).__name__}")
    return v


def _get_int(d: Mapping[str, Any], key: str, path: str, lo: int = -(2**63), hi: int = 2**63 - 1) -> int:
    v = d.get(key)
    if v is None:
        return 0
    if type(v) is not int:
        raise _Bad(f"{path}{key}", f"expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise _Bad(f"{path}{key}", f"{v} out of range [{lo}, {hi}]")
    return v


def _get_bool(d: Mapping[str, Any], key: str, path: str) -> bool:
    v = d.get(key)
    if v is None:
        return False
    if type(v) is not bool:
        raise _Bad(f"{path}{key}", f"expected true or false, got {v!r}")
    return v


def _args_from_wire(raw: Any, path: str) -> list[Arg]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _Bad(path, f"expected a list of arguments, got {type(raw).__name__}")
    out = []
    new = object.__new__
    convs = _CONVERTERS
    for i, item in enumerate(raw):
        if type(item) is not dict:
            raise _Bad(f"{path}[{i}]", "expected an object with Type and Value")
        t = item.get("Type")
        if t is None:
            t = item.get("type")
        if type(t) is not str:
            raise _Bad(f"{path}[{i}].Type", "missing or not a string")
        v = item["Value"] if "Value" in item else item.get("value")
        name = item.get("Name") or item.get("name") or ""
        conv = convs.get(t)
        if conv is None:
            raise _Bad(f"{path}[{i}]", str(ArgumentTypeError(t, v, "unsupported type")))
        try:
            v = conv(v)
        except ArgumentTypeError as exc:
            raise _Bad(f"{path}[{i}]", str(exc)) from None
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
        raise _Bad(path, "expected a list of signatures")
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
    sig.headers = headers if headers is not None else _NullHeaders()
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
        raise _Bad(path.rstrip(".") or "message", "expected a JSON object")
    if _SIG_FIELD_SET.issuperset(d):
        fast = _sig_fast(d, path)
        if fast is not None:
            return fast
    else:
        d = _canonical_keys(d, _SIG_FOLDED, _SIG_FIELD_SET)
    name = _get_str(d, "Name", path)
    if not name:
        raise _Bad(f"{path}Name", "missing or empty task name")
    eta_raw = d.get("ETA")
    eta = None
    if eta_raw is not None:
        if not isinstance(eta_raw, str):
            raise _Bad(f"{path}ETA", "expected an RFC 3339 string or null")
        try:
            eta = parse_time(eta_raw)
        except ValueError as exc:
            raise _Bad(f"{path}ETA", str(exc)) from None
        if eta.year == 1:  # Go's zero time: no ETA
            eta = None
    headers = d.get("Headers")
    if headers is None:
        headers = _NullHeaders()
    elif not isinstance(headers, dict):
        raise _Bad(f"{path}Headers", "expected an object or null")
    cc = d.get("ChordCallback")
    sig = Signature.__new__(Signature)
    sig.name = name
    sig.args = _args_from_wire(d.get("Args"), f"{path}Args")
    sig.uuid = _get_str(d, "UUID", path)
    sig.routing_key = _get_str(d, "RoutingKey", path)
    sig.eta = eta
    sig.group_uuid = _get_str(d, "GroupUUID", path)
    sig.group_task_count = _get_int(d, "GroupTaskCount", path)
    sig.headers = headers
    sig.priority = _get_int(d, "Priority", path, 0, 255)
    sig.immutable = _get_bool(d, "Immutable", path)
    sig.retry_count = _get_int(d, "RetryCount", path)
    sig.retry_timeout = _get_int(d, "RetryTimeout", path)
    sig.on_success = _sig_list(d.get("OnSuccess"), f"{path}OnSuccess")
    sig.on_error = _sig_list(d.get("OnError"), f"{path}OnError")
    sig.chord_callback = _sig_from_wire(cc, f"{path}ChordCallback.") if cc is not None else None
    sig.broker_message_group_id = _get_str(d, "BrokerMessageGroupId", path)
    sig.sqs_receipt_handle = _get_str(d, "SQSReceiptHandle", path)
    sig.stop_task_deletion_on_error = _get_bool(d, "StopTaskDeletionOnError", path)
    sig.ignore_when_task_not_registered = _get_bool(d, "IgnoreWhenTaskNotRegistered", path)
    return sig


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    f = float(text)
    if math.isinf(f):
        raise ValueError(f"number {text} out of the float64 range")
    return f


def _first_decode(text: str) -> Any:
    # The decoder is made on the first decode rather than at import (as the encoder).
    global _decode
    import json

    # Go's JSON has no NaN or Infinity and refuses numbers beyond float64: Python's json module
    # would accept them, and give a message that cannot be encoded again.
    _decode = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite).decode
    return _decode(text)


_decode: Callable[[str], Any] = _first_decode


def _without_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _surrogates().sub("\ufffd", value)
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    return value


def _loads(raw: bytes | str) -> Any:
    """Parse JSON as Go's ``encoding/json`` reads it.

    The text must be UTF-8. A ``\\uXXXX`` escape of a lone surrogate (half of a UTF-16 pair,
    not a character) is read as U+FFFD, as Go does, so that no decoded string holds one: it
    could not be encoded again, and a message holding it would be stuck in every path that
    rewrites or stores it.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        data = _decode(text)
        if "\\ud" in text or "\\uD" in text:  # rare: walk only then (valid pairs too)
            data = _without_surrogates(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(raw, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise DecodeError(raw, "not valid JSON: nested too deeply") from None
    return data


def decode_signature(raw: bytes | str | Mapping[str, Any]) -> Signature:
    """Decode a Go Machinery task message.

    :param raw: the message body (bytes or text) or an already parsed JSON object.
    :raises DecodeError: not JSON, not an object, a field of the wrong type, a bad argument.
    """
    data = raw if isinstance(raw, Mapping) else _loads(raw)
    try:
        return _sig_from_wire(dict(data) if isinstance(data, Mapping) and not isinstance(data, dict) else data)
    except _Bad as bad:
        import json

        src = raw if not isinstance(raw, Mapping) else json.dumps(raw, default=str)
        raise DecodeError(src, f"{bad.path}: {bad.reason}") from None
    except RecursionError:
        src = raw if not isinstance(raw, Mapping) else b"<mapping>"
        raise DecodeError(src, "signatures nested too deeply") from None


# ---------------------------------------------------------------------------------------------
# Task states and group metadata
# ---------------------------------------------------------------------------------------------


def _result_to_wire(r: TaskResult, marks: _FloatMarks) -> dict[str, Any]:
    v = r.value
    if r.type in _BYTES_TYPES:
        import base64

        v = base64.b64encode(v).decode("ascii")
    elif _needs_slow(v):
        v = _sorted_json(v, marks)
    return {"Type": r.type, "Value": v}


def encode_task_state(state: TaskState) -> bytes:
    """A task state as Go Machinery's JSON (``TaskUUID``, ``TaskName``, ``State``...)."""
    marks = _FloatMarks()
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
    return _finish(obj, marks)


_STATE_FIELDS = ("TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL")
_STATE_FOLDED = {f.lower(): f for f in _STATE_FIELDS} | {
    "_id": "TaskUUID",
    "task_name": "TaskName",
    "created_at": "CreatedAt",
    "progress": "Progress",  # Python only (machinery.progress)
}
_STATE_SET = frozenset((*_STATE_FIELDS, "Progress"))
_STATES = frozenset({"PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE"})


def _time_field(d: Mapping[str, Any], key: str) -> datetime:
    v = d.get(key)
    if v is None:
        return ZERO_TIME
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)
    if not isinstance(v, str):
        raise _Bad(key, "expected an RFC 3339 string")
    try:
        return parse_time(v)
    except ValueError as exc:
        raise _Bad(key, str(exc)) from None


def _progress(raw: Any) -> Any:
    if raw is None:
        return None
    from machinery.progress import Progress

    return Progress.from_wire(raw)


def task_state_from_mapping(d: Mapping[str, Any]) -> TaskState:
    """Build a :class:`TaskState` from a decoded JSON object (Go or lower-case BSON names).

    :raises DecodeError: on a malformed record.
    """
    try:
        d = _canonical_keys(dict(d), _STATE_FOLDED, _STATE_SET)
        st = _get_str(d, "State", "")
        if st not in _STATES:
            raise _Bad("State", f"unknown state {st!r}")
        raw_results = d.get("Results")
        results: list[TaskResult] | None = None
        if raw_results is not None:
            if not isinstance(raw_results, list):
                raise _Bad("Results", "expected a list")
            results = []
            for i, r in enumerate(raw_results):
                if not isinstance(r, dict):
                    raise _Bad(f"Results[{i}]", "expected an object")
                t = r.get("Type", r.get("type"))
                if not isinstance(t, str):
                    raise _Bad(f"Results[{i}].Type", "missing or not a string")
                v = r.get("Value", r.get("value"))
                try:
                    v = from_go(t, v)
                except ArgumentTypeError:
                    pass  # unknown Go type from a Go worker (a struct...): keep the JSON value
                results.append(TaskResult(t, v))
        return TaskState(
            task_uuid=_get_str(d, "TaskUUID", ""),
            state=st,
            task_name=_get_str(d, "TaskName", ""),
            results=results,
            error=_get_str(d, "Error", ""),
            created_at=_time_field(d, "CreatedAt"),
            ttl=_get_int(d, "TTL", ""),
            progress=_progress(d.get("Progress")),
        )
    except _Bad as bad:
        import json

        raise DecodeError(json.dumps(dict(d), default=str), f"task state {bad.path}: {bad.reason}") from None


def decode_task_state(raw: bytes | str) -> TaskState:
    """Decode a task state stored by Go or Python machinery.

    :raises DecodeError: on malformed JSON or fields.
    """
    data = _loads(raw)
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
    return _utf8(_go_escape(_dumps(obj)))


_GROUP_FIELDS = ("GroupUUID", "TaskUUIDs", "ChordTriggered", "Lock", "CreatedAt", "TTL")
_GROUP_FOLDED = {f.lower(): f for f in _GROUP_FIELDS} | {
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
        d = _canonical_keys(dict(d), _GROUP_FOLDED, _GROUP_SET)
        uuids = d.get("TaskUUIDs")
        if uuids is None:
            uuids = []
        if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
            raise _Bad("TaskUUIDs", "expected a list of strings")
        return GroupMeta(
            group_uuid=_get_str(d, "GroupUUID", ""),
            task_uuids=list(uuids),
            chord_triggered=_get_bool(d, "ChordTriggered", ""),
            lock=_get_bool(d, "Lock", ""),
            created_at=_time_field(d, "CreatedAt"),
            ttl=_get_int(d, "TTL", ""),
        )
    except _Bad as bad:
        import json

        raise DecodeError(json.dumps(dict(d), default=str), f"group meta {bad.path}: {bad.reason}") from None


def decode_group_meta(raw: bytes | str) -> GroupMeta:
    """Decode group metadata stored by Go or Python machinery.

    :raises DecodeError: on malformed JSON or fields.
    """
    data = _loads(raw)
    if not isinstance(data, dict):
        raise DecodeError(raw, "group meta: expected a JSON object")
    return group_meta_from_mapping(data)


def results_for(value: Any) -> list[TaskResult]:
    """The typed results for a task's Python return value.

    ``None`` → no results (a Go task returning only ``error``); a ``tuple`` → one result per
    item (Go's multiple return values); anything else → one result.

    :raises ArgumentTypeError: a value JSON cannot carry.
    """
    if value is None:
        return []
    if type(value) is tuple:
        return [TaskResult(result_type(v), v) for v in value]
    t = type(value)
    if t is int and -(2**63) <= value < 2**63:
        return [TaskResult("int64", value)]
    if t is str:
        return [TaskResult("string", value)]
    return [TaskResult(result_type(value), value)]


def args_of(values: Iterable[Any] | Sequence[Any]) -> list[Arg]:
    """Typed arguments for plain Python values (types inferred)."""
    return [Arg.of(v) for v in values]
