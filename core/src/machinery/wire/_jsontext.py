"""JSON text as Go's ``encoding/json`` writes and reads it (internal to :mod:`machinery.wire`).

Compact separators, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, floats in Go's shortest
form, map keys sorted, lone surrogates written as ``\\ufffd``; reading refuses NaN, infinities
and numbers beyond float64, and reads a lone surrogate escape as U+FFFD. Also the field checks
the decoders share (:class:`Bad` and the ``get_*`` helpers). ``json`` and ``re`` are imported
on first use, not at import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from machinery.errors import ArgumentTypeError, DecodeError

if TYPE_CHECKING:
    import re

__all__ = [
    "Bad",
    "FloatMarks",
    "canonical_keys",
    "encode_plain",
    "finish",
    "get_bool",
    "get_int",
    "get_str",
    "go_escape",
    "loads",
    "needs_slow",
    "sorted_json",
    "utf8",
]


def _first_dumps(obj: Any) -> str:
    # ``json`` is imported, and the encoder made, on the first encode rather than at import.
    global _dumps
    import json

    _dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
    return _dumps(obj)


#: Compact JSON text (Go's separators; NaN and infinities refused).
_dumps: Callable[[Any], str] = _first_dumps


def encode_plain(obj: Any) -> bytes:
    """``obj`` (only strings, numbers, booleans, lists and string-keyed objects; no floats
    needing Go's form) as Go's JSON bytes."""
    return utf8(go_escape(_dumps(obj)))


def go_escape(text: str) -> str:
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


class FloatMarks:
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


def sorted_json(value: Any, marks: FloatMarks | None) -> Any:
    """Deep copy of a JSON value with map keys sorted (Go sorts map keys) and floats marked."""
    if isinstance(value, dict):
        return {k: sorted_json(value[k], marks) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [sorted_json(v, marks) for v in value]
    if marks is not None and type(value) is float:
        return marks.mark(value)
    return value


def needs_slow(value: Any) -> bool:
    t = type(value)
    if t is float or t is dict:
        return True
    if t is list or t is tuple:
        return any(needs_slow(v) for v in value)
    return False


def utf8(text: str) -> bytes:
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


def finish(obj: Any, marks: FloatMarks) -> bytes:
    try:
        text = _dumps(obj)
    except (TypeError, ValueError) as exc:
        raise ArgumentTypeError("json", obj, f"not JSON-encodable: {exc}") from None
    if marks.texts:
        text = marks.apply(text)
    return utf8(go_escape(text))


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


def loads(raw: bytes | str) -> Any:
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


class Bad(Exception):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason


def canonical_keys(d: dict[str, Any], folded: Mapping[str, str], known: frozenset[str]) -> dict[str, Any]:
    # Go's decoder matches field names case-insensitively; unknown keys are ignored.
    if all(k in known for k in d):
        return d
    out: dict[str, Any] = {}
    for k, v in d.items():
        canon = folded.get(k.lower()) if isinstance(k, str) else None
        if canon is not None and (canon not in out or k == canon):
            out[canon] = v
    return out


def get_str(d: Mapping[str, Any], key: str, path: str) -> str:
    v = d.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise Bad(f"{path}{key}", f"expected a string, got {type(v).__name__}")
    return v


def get_int(d: Mapping[str, Any], key: str, path: str, lo: int = -(2**63), hi: int = 2**63 - 1) -> int:
    v = d.get(key)
    if v is None:
        return 0
    if type(v) is not int:
        raise Bad(f"{path}{key}", f"expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise Bad(f"{path}{key}", f"{v} out of range [{lo}, {hi}]")
    return v


def get_bool(d: Mapping[str, Any], key: str, path: str) -> bool:
    v = d.get(key)
    if v is None:
        return False
    if type(v) is not bool:
        raise Bad(f"{path}{key}", f"expected true or false, got {v!r}")
    return v
