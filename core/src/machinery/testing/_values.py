"""Values the suite sends through transports: every Go argument type and result shape."""

from __future__ import annotations

from typing import Any

from machinery.signature import Arg

__all__ = ["EVERY_ARG", "EVERY_RESULT", "TRICKY_TEXT"]

#: Text that breaks naive encoders: non-ASCII, astral plane, HTML-escaped characters in Go's
#: JSON, quotes, backslashes, control characters and U+2028.
TRICKY_TEXT = 'héllo ✓ 𝄞 <b>&amp;</b> "quoted" \\ back\nline\ttab \u2028 end'


def every_arg() -> list[Arg]:
    """One argument of every Go type machinery carries, with boundary values."""
    return [
        Arg("int", -(2**63)),
        Arg("int8", -128),
        Arg("int16", 32767),
        Arg("int32", -(2**31)),
        Arg("int64", 2**63 - 1),
        Arg("uint", 2**64 - 1),
        Arg("uint8", 255),
        Arg("uint16", 65535),
        Arg("uint32", 2**32 - 1),
        Arg("uint64", 2**64 - 1),
        Arg("float32", 1.5),
        Arg("float64", 0.1),
        Arg("float64", 3.0),
        Arg("float64", -1.25e300),
        Arg("bool", True),
        Arg("bool", False),
        Arg("string", ""),
        Arg("string", TRICKY_TEXT),
        Arg("[]string", ["a", "", TRICKY_TEXT]),
        Arg("[]string", []),
        Arg("[]int64", [1, -2, 2**62]),
        Arg("[]uint8", b"abc"),
        Arg("[]byte", b"\x00\x01\xff binary"),
        Arg("[]float64", [1.5, -0.25, 2.0]),
        Arg("[]bool", [True, False]),
        Arg("map[string]interface {}", {"k": [1, "two", None, {"n": 1.5}], "<&>": TRICKY_TEXT}),
        Arg("[]interface {}", [1, "x", True, {"n": None}, 2.5]),
        Arg("interface {}", "anything"),
        Arg("int64", 42, name="named"),
    ]


EVERY_ARG = every_arg()

#: Task return values of every shape (a tuple is several results, None is none).
EVERY_RESULT: list[Any] = [
    0,
    -1,
    2**63 - 1,
    2**64 - 1,
    1.5,
    0.1,
    True,
    False,
    TRICKY_TEXT,
    "",
    b"\x00\xff bytes",
    [1, 2, 3],
    ["a", "b"],
    [1.5, 2.5],
    [True, False],
    {"a": {"b": [1, None, "c"]}, "n": 2.5},
    [1, "x", {"n": None}],
    (1, "two", 3.5),
    None,
]
