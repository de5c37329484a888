"""Go Machinery's wire format, as data and as code.

One package holds every Go name machinery writes or reads, split as Go's ``tasks/`` package is:

- :mod:`~machinery.wire.model`: :class:`Signature` and :class:`Arg`, plain Python objects;
- :mod:`~machinery.wire.gotypes`: Go type names (:data:`GO_TYPES`) and the conversions of
  typed arguments and results (:func:`from_go`, :func:`to_go`, :func:`infer_type`...), and
  ``time.Time``'s JSON form (:func:`format_time`, :func:`parse_time`);
- :mod:`~machinery.wire.codec`: task messages to and from JSON bytes, byte for byte as Go;
- :mod:`~machinery.wire.records`: task states and group metadata to and from JSON bytes, and
  to and from documents for backends that store fields;
- :mod:`~machinery.wire.fields`: the Go field names as public constants
  (``SIGNATURE.routing_key == "RoutingKey"``, ``TASK_STATE.ttl == "TTL"``,
  ``GROUP_META.chord_triggered == "ChordTriggered"``), so that no plugin needs to encode a
  probe object to learn a key.

Plugins reach it as ``from machinery.plugin import wire``. Names load on first use (PEP 562),
so importing one submodule does not import the others (:mod:`machinery.progress` imports
:mod:`~machinery.wire.gotypes`, and :mod:`~machinery.wire.records` imports it back).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from machinery.wire.codec import decode_signature, encode_signature
    from machinery.wire.fields import ARG, GROUP_META, SIGNATURE, TASK_RESULT, TASK_STATE
    from machinery.wire.gotypes import (
        GO_TYPES,
        format_time,
        from_go,
        infer_type,
        parse_time,
        result_type,
        results_for,
        to_go,
    )
    from machinery.wire.model import Arg, Headers, Signature, args_of, new_uuid, sent_headers
    from machinery.wire.records import (
        decode_group_meta,
        decode_task_state,
        encode_group_meta,
        encode_task_state,
        group_meta_from_mapping,
        group_meta_to_document,
        task_state_from_mapping,
        task_state_to_document,
    )

#: Public name -> the submodule that defines it.
_LAZY = {
    **dict.fromkeys(("ARG", "GROUP_META", "SIGNATURE", "TASK_RESULT", "TASK_STATE"), "fields"),
    **dict.fromkeys(
        ("GO_TYPES", "format_time", "from_go", "infer_type", "parse_time", "result_type", "results_for", "to_go"),
        "gotypes",
    ),
    **dict.fromkeys(("Arg", "Headers", "Signature", "args_of", "new_uuid", "sent_headers"), "model"),
    **dict.fromkeys(("decode_signature", "encode_signature"), "codec"),
    **dict.fromkeys(
        (
            "decode_group_meta",
            "decode_task_state",
            "encode_group_meta",
            "encode_task_state",
            "group_meta_from_mapping",
            "group_meta_to_document",
            "task_state_from_mapping",
            "task_state_to_document",
        ),
        "records",
    ),
}

__all__ = [
    "ARG",
    "GO_TYPES",
    "GROUP_META",
    "SIGNATURE",
    "TASK_RESULT",
    "TASK_STATE",
    "Arg",
    "Headers",
    "Signature",
    "args_of",
    "decode_group_meta",
    "decode_signature",
    "decode_task_state",
    "encode_group_meta",
    "encode_signature",
    "encode_task_state",
    "format_time",
    "from_go",
    "group_meta_from_mapping",
    "group_meta_to_document",
    "infer_type",
    "new_uuid",
    "parse_time",
    "result_type",
    "results_for",
    "sent_headers",
    "task_state_from_mapping",
    "task_state_to_document",
    "to_go",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
