"""Signatures, typed arguments and the Go wire codec (compatibility module).

The code lives in :mod:`machinery.wire` now: the model in :mod:`machinery.wire.model`, the Go
types in :mod:`machinery.wire.gotypes`, the message codec in :mod:`machinery.wire.codec`, task
states and group metadata in :mod:`machinery.wire.records` and the Go field names in
:mod:`machinery.wire.fields`. This module re-exports the names it always had, so
``from machinery.signature import Signature, encode_signature`` keeps working.
"""

from __future__ import annotations

from machinery.wire.codec import decode_signature, encode_signature
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
    task_state_from_mapping,
)

__all__ = [
    "GO_TYPES",
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
    "infer_type",
    "new_uuid",
    "parse_time",
    "result_type",
    "results_for",
    "sent_headers",
    "task_state_from_mapping",
    "to_go",
]
