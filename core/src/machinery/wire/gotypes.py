"""Go's types on the wire: the type names of typed arguments and results, and Go's time format.

Go Machinery sends each argument as ``{"Name", "Type", "Value"}`` where ``Type`` is a Go type
name (``int64``, ``[]string``, ``[]byte``...). This module holds those names
(:data:`GO_TYPES`), the checks and conversions between wire values and Python values
(:func:`from_go`, :func:`to_go`, :func:`infer_type`, :func:`result_type`,
:func:`results_for`), and ``time.Time``'s JSON form (:func:`format_time`, :func:`parse_time`).
It imports nothing above :mod:`machinery.errors` and :mod:`machinery.state`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from machinery.errors import ArgumentTypeError
from machinery.state import TaskResult

if TYPE_CHECKING:
    import re

__all__ = [
    "BYTES_TYPES",
    "FLOAT_TYPES",
    "GO_TYPES",
    "JSON_TYPES",
    "CONVERTERS",
    "format_time",
    "from_go",
    "infer_type",
    "parse_time",
    "result_type",
    "results_for",
    "to_go",
]

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
JSON_TYPES = frozenset({"map[string]interface {}", "[]interface {}", "interface {}"})


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


#: Go type name -> its converter (what :func:`from_go` calls). Read-only: the decoder looks
#: types up here directly.
CONVERTERS: dict[str, Callable[[Any], Any]] = dict(_SCALARS)
for _name, _conv in list(_SCALARS.items()):
    CONVERTERS["[]" + _name] = _slice("[]" + _name, _conv)
CONVERTERS["[]byte"] = _bytes("[]byte")
CONVERTERS["[]uint8"] = _bytes("[]uint8")
for _name in JSON_TYPES:
    CONVERTERS[_name] = _json_value

#: Every Go type name machinery understands (Go Machinery's ``typesMap`` plus the JSON types).
GO_TYPES: frozenset[str] = frozenset(CONVERTERS)

#: Byte slices: base64 text on the wire, ``bytes`` in Python.
BYTES_TYPES = frozenset({"[]byte", "[]uint8"})
#: Types whose values are floats (written in Go's shortest float form).
FLOAT_TYPES = frozenset({"float32", "float64", "[]float32", "[]float64"})


def from_go(type_name: str, value: Any) -> Any:
    """Convert a wire value of Go type ``type_name`` to its Python value, with range checks.

    :param type_name: a Go type name from :data:`GO_TYPES`.
    :param value: the JSON-decoded value.
    :returns: ``int``, ``float``, ``bool``, ``str``, ``bytes`` or a list of those.
    :raises ArgumentTypeError: unknown type name, wrong kind of value or out of range.
    """
    conv = CONVERTERS.get(type_name)
    if conv is None:
        raise ArgumentTypeError(type_name, value, "unsupported type")
    return conv(value)


def to_go(type_name: str, value: Any) -> Any:
    """Convert a Python value to the JSON value Go expects for ``type_name``.

    Only byte slices change form (to base64 text); other values pass through.
    """
    if type_name in BYTES_TYPES:
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


# ---------------------------------------------------------------------------------------------
# time.Time
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
