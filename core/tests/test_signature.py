"""The Go wire codec: typed arguments, byte-compatible encoding, Go fixtures, malformed input."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from machinery import Arg, ArgumentTypeError, Config, DecodeError, Server, Signature
from machinery.signature import (
    GO_TYPES,
    decode_group_meta,
    decode_signature,
    decode_task_state,
    encode_group_meta,
    encode_signature,
    encode_task_state,
    format_time,
    infer_type,
    parse_time,
    result_type,
    results_for,
)
from machinery.state import GroupMeta, TaskResult, TaskState
from machinery.workflow import Chain, Chord, Group

FIXTURES = Path(__file__).parent / "fixtures" / "go"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes().strip()


# -- typed arguments ----------------------------------------------------------------------------

RANGES = [
    ("int8", -128, 127),
    ("int16", -(2**15), 2**15 - 1),
    ("int32", -(2**31), 2**31 - 1),
    ("int64", -(2**63), 2**63 - 1),
    ("int", -(2**63), 2**63 - 1),
    ("uint8", 0, 255),
    ("uint16", 0, 2**16 - 1),
    ("uint32", 0, 2**32 - 1),
    ("uint64", 0, 2**64 - 1),
    ("uint", 0, 2**64 - 1),
]


@pytest.mark.parametrize(("type_name", "lo", "hi"), RANGES)
def test_integer_ranges_are_checked_never_wrapped(type_name: str, lo: int, hi: int) -> None:
    assert Arg(type_name, lo).value == lo
    assert Arg(type_name, hi).value == hi
    with pytest.raises(ArgumentTypeError, match="out of range"):
        Arg(type_name, hi + 1)
    with pytest.raises(ArgumentTypeError, match="out of range"):
        Arg(type_name, lo - 1)


def test_int8_300_is_a_clear_error() -> None:
    with pytest.raises(ArgumentTypeError) as info:
        Arg("int8", 300)
    assert info.value.arg_type == "int8"
    assert info.value.value == 300
    assert "int8" in str(info.value) and "300" in str(info.value)


@pytest.mark.parametrize(
    ("type_name", "value"),
    [
        ("int64", "1"),
        ("int64", 1.5),
        ("int64", True),
        ("uint8", -1),
        ("bool", 1),
        ("bool", "true"),
        ("string", 5),
        ("float64", "1.0"),
        ("float64", True),
        ("float64", float("nan")),
        ("float32", 1e39),
        ("[]int64", 5),
        ("[]int8", [1, 200]),
        ("[]string", ["a", 1]),
        ("[]byte", "!!not base64!!"),
        ("[]uint8", [1, 256]),
        ("complex128", 1),
    ],
)
def test_wrong_kinds_are_rejected(type_name: str, value: object) -> None:
    with pytest.raises(ArgumentTypeError):
        Arg(type_name, value)


def test_every_go_type_round_trips() -> None:
    samples = {
        "bool": True,
        "int": -5,
        "int8": -8,
        "int16": 16,
        "int32": -32,
        "int64": 2**63 - 1,
        "uint": 2**64 - 1,
        "uint8": 8,
        "uint16": 16,
        "uint32": 32,
        "uint64": 2**64 - 1,
        "float32": 1.5,
        "float64": 0.1,
        "string": "héllo <&>",
        "[]bool": [True, False],
        "[]int": [1, -1],
        "[]int8": [-128, 127],
        "[]int16": [1],
        "[]int32": [2],
        "[]int64": [3, 2**63 - 1],
        "[]uint": [4],
        "[]uint8": b"\x00\xffbytes",
        "[]uint16": [5],
        "[]uint32": [6],
        "[]uint64": [2**64 - 1],
        "[]float32": [0.25],
        "[]float64": [1e-7, 1e21, 100.0, -2.5],
        "[]string": ["a", "b"],
        "[]byte": b"raw",
        "map[string]interface {}": {"b": 1, "a": [1.5, "x"]},
        "[]interface {}": [1, "two", None],
    }
    assert set(samples) <= GO_TYPES
    sig = Signature("t", args=[Arg(t, v) for t, v in samples.items()])
    back = decode_signature(encode_signature(sig))
    assert [(a.type, a.value) for a in back.args] == list(samples.items())
    assert encode_signature(back) == encode_signature(sig)


def test_int64_and_uint64_keep_full_precision() -> None:
    raw = (
        b'{"UUID":"task_x","Name":"n","Args":[{"Type":"uint64","Value":18446744073709551615},'
        b'{"Type":"int64","Value":-9223372036854775808}]}'
    )
    sig = decode_signature(raw)
    assert sig.args[0].value == 18446744073709551615
    assert sig.args[1].value == -9223372036854775808
    assert b"18446744073709551615" in encode_signature(sig)


def test_bytes_travel_as_base64() -> None:
    sig = Signature("t", args=[Arg("[]byte", b"hello")])
    wire = json.loads(encode_signature(sig))
    assert wire["Args"][0] == {"Name": "", "Type": "[]byte", "Value": "aGVsbG8="}
    assert decode_signature(encode_signature(sig)).args[0].value == b"hello"
    # a list of ints (as a non-Go producer may send) is accepted too
    assert Arg("[]uint8", [104, 105]).value == b"hi"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "int64"),
        (2**63, "uint64"),
        (1.5, "float64"),
        ("s", "string"),
        (True, "bool"),
        (b"x", "[]byte"),
        ([1, 2], "[]int64"),
        (["a"], "[]string"),
        ([1, 2.5], "[]float64"),
        ([0, 2**64 - 1], "[]uint64"),  # Go reads it back (an echo of a []uint64 arg)
        ([-1, 2**64 - 1], "[]interface {}"),
        ([1, "a"], "[]interface {}"),
        ([1, None], "[]interface {}"),
        ([], "[]interface {}"),
        ({"a": 1}, "map[string]interface {}"),
    ],
)
def test_infer_type(value: object, expected: str) -> None:
    assert infer_type(value) == expected


def test_infer_type_rejects_what_json_cannot_carry() -> None:
    with pytest.raises(ArgumentTypeError):
        infer_type(object())
    with pytest.raises(ArgumentTypeError):
        infer_type(2**64)


def test_plain_values_become_typed_args() -> None:
    sig = Signature("add", args=[1, "x", 2.5, [1, 2]])
    assert [a.type for a in sig.args] == ["int64", "string", "float64", "[]int64"]


def test_result_types_use_go_reflect_names() -> None:
    assert result_type(b"x") == "[]uint8"
    assert [r.type for r in results_for((1, "a", b"z"))] == ["int64", "string", "[]uint8"]
    assert results_for(None) == []
    assert results_for(3) == [TaskResult("int64", 3)]


# -- encoding: byte compatibility -----------------------------------------------------------


def test_encoding_matches_go_json_marshal_byte_for_byte() -> None:
    """Go master's ``Signature`` has no ``ChordErrorCallback`` field (``v2/tasks/signature.go``)."""
    sig = Signature(
        "add",
        args=[Arg("int64", 1), Arg("int64", 1)],
        uuid="task_48760a1a-8576-4536-973b-da09048c2ac5",
        routing_key="machinery_task",
        headers={},
    )
    expected = (
        b'{"UUID":"task_48760a1a-8576-4536-973b-da09048c2ac5","Name":"add","RoutingKey":"machinery_task",'
        b'"ETA":null,"GroupUUID":"","GroupTaskCount":0,'
        b'"Args":[{"Name":"","Type":"int64","Value":1},{"Name":"","Type":"int64","Value":1}],'
        b'"Headers":{},"Priority":0,"Immutable":false,"RetryCount":0,"RetryTimeout":0,'
        b'"OnSuccess":null,"OnError":null,"ChordCallback":null,'
        b'"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
        b'"IgnoreWhenTaskNotRegistered":false}'
    )
    assert encode_signature(sig) == expected


def test_go_fixture_with_every_type_reencodes_identically() -> None:
    raw = fixture("signature_all_types.json")
    assert encode_signature(decode_signature(raw)) == raw


def test_go_v2_fixture_reencodes_identically_up_to_nanoseconds() -> None:
    raw = fixture("signature_v2_full.json")
    sig = decode_signature(raw)
    assert sig.eta == datetime(2026, 11, 23, 6, 0, 0, 123456, tzinfo=timezone.utc)
    expected = raw.replace(b"06:00:00.123456789Z", b"06:00:00.123456Z")
    assert encode_signature(sig) == expected


def test_go_v2_fixture_fields() -> None:
    sig = decode_signature(fixture("signature_v2_full.json"))
    assert sig.uuid.startswith("task_")
    assert sig.group_uuid.startswith("group_") and sig.group_task_count == 2
    assert sig.args[1].name == "x" and sig.args[1].value == 2**63 - 1
    assert sig.headers == {"trace-id": "abc"}
    assert sig.priority == 3 and sig.retry_count == 2
    assert sig.on_error[0].name == "on_err"
    assert sig.chord_callback is not None and sig.chord_callback.uuid.startswith("chord_")


def test_older_go_producer_without_later_fields_decodes_with_defaults() -> None:
    sig = decode_signature(fixture("signature_v1_seed_chain.json"))
    names = []
    s: Signature | None = sig
    while s is not None:
        names.append((s.name, [a.value for a in s.args]))
        s = s.on_success[0] if s.on_success else None
    assert names == [("add", [1, 1]), ("add", [2, 2]), ("add", [5, 6]), ("multiply", [4])]
    assert sig.priority == 0 and sig.eta is None and not sig.ignore_when_task_not_registered


def test_keys_match_case_insensitively_like_go() -> None:
    sig = decode_signature(b'{"uuid":"task_1","name":"add","args":[{"type":"int64","value":3}]}')
    assert sig.uuid == "task_1" and sig.name == "add" and sig.args[0].value == 3


def test_html_characters_are_escaped_like_go() -> None:
    body = encode_signature(Signature("t", args=["<a&b>\u2028"]))
    assert b"\\u003ca\\u0026b\\u003e\\u2028" in body
    assert decode_signature(body).args[0].value == "<a&b>\u2028"


def test_header_keys_are_sorted_like_go_maps() -> None:
    body = encode_signature(Signature("t", headers={"b": 1, "a": {"z": 1, "y": 2}}))
    assert b'"Headers":{"a":{"y":2,"z":1},"b":1}' in body


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (0.1, "0.1"),
        (1e-7, "1e-7"),
        (1e21, "1e+21"),
        (1.5e-5, "0.000015"),
        (1e20, "100000000000000000000"),
        (-2.5, "-2.5"),
        (1e-10, "1e-10"),
    ],
)
def test_floats_use_go_formatting(value: float, text: str) -> None:
    body = encode_signature(Signature("t", args=[Arg("float64", value)]))
    assert f'"Type":"float64","Value":{text}}}'.encode() in body
    assert decode_signature(body).args[0].value == value


def test_workflow_uuids_use_go_prefixes() -> None:
    g = Group(Signature("add", args=[1]), Signature("add", args=[2]))
    assert g.group_uuid.startswith("group_")
    assert all(t.uuid.startswith("task_") and t.group_task_count == 2 for t in g.tasks)
    c = Chord(g, Signature("multiply"))
    assert c.callback.uuid.startswith("chord_")
    assert all(t.chord_callback is c.callback for t in g.tasks)
    ch = Chain(Signature("a"), Signature("b"), Signature("c"))
    assert ch.tasks[0].on_success == [ch.tasks[1]] and ch.tasks[1].on_success == [ch.tasks[2]]
    wire = json.loads(encode_signature(ch.tasks[0]))
    assert wire["OnSuccess"][0]["Name"] == "b"
    assert wire["OnSuccess"][0]["OnSuccess"][0]["Name"] == "c"


def test_no_chord_error_callback_field_and_one_from_an_unmerged_go_commit_is_ignored() -> None:
    """``ChordErrorCallback`` is not a field of Go Machinery master (``v2/tasks/signature.go``);
    a producer built from the unmerged commit that adds it still decodes (Go ignores unknown keys)."""
    body = encode_signature(Signature("add", args=[1], chord_callback=Signature("cb")))
    assert b"ChordErrorCallback" not in body
    raw = json.loads(body)
    raw["ChordErrorCallback"] = {"UUID": "task_x", "Name": "on_chord_error"}
    sig = decode_signature(json.dumps(raw))
    assert sig.chord_callback is not None and sig.chord_callback.name == "cb"
    assert not hasattr(sig, "chord_error_callback")


def test_headers_are_null_until_sent_like_go() -> None:
    """Go's ``NewSignature``/``NewChain`` leave ``Headers`` nil (``null``); ``SendTask`` makes them
    ``{}`` (``v2/server.go`` SendTaskWithContext, ``v2/tracing/tracing.go`` HeadersWithSpan), so a
    plain ``SendChain`` sends the head with ``{}`` and the nested steps with ``null``;
    ``SendChainWithContext`` gives every step ``{}``, ``SendChord`` the callback too."""
    srv = Server(Config(broker="memory://hdr", result_backend="memory://hdr"))
    chain = Chain(Signature("a"), Signature("b", headers={"k": "v"}), Signature("c"))
    assert b'"Headers":null' in encode_signature(chain.tasks[2])
    srv.send_chain(chain)
    wire = json.loads(encode_signature(chain.tasks[0]))
    assert wire["Headers"] == {}
    assert wire["OnSuccess"][0]["Headers"] == {"k": "v"}
    assert wire["OnSuccess"][0]["OnSuccess"][0]["Headers"] is None
    chain = Chain(Signature("a"), Signature("b"))
    srv.send_chain_with_context({}, chain)
    assert json.loads(encode_signature(chain.tasks[0]))["OnSuccess"][0]["Headers"] == {}
    chord = Chord(Group(Signature("a"), Signature("b")), Signature("cb"))
    srv.send_chord(chord)
    assert json.loads(encode_signature(chord.group.tasks[0]))["ChordCallback"]["Headers"] == {}
    on_err = Signature("e")
    srv.send_task(Signature("a", on_error=[on_err]))
    assert b'"Headers":null' in encode_signature(on_err)
    srv.close()


# -- time -----------------------------------------------------------------------------------


def test_time_format_is_rfc3339_trimmed() -> None:
    assert format_time(datetime(2026, 11, 23, 6, 0, 0, tzinfo=timezone.utc)) == "2026-11-23T06:00:00Z"
    assert format_time(datetime(2026, 11, 23, 6, 0, 0, 120000, tzinfo=timezone.utc)) == "2026-11-23T06:00:00.12Z"
    plus2 = timezone(timedelta(hours=2))
    assert format_time(datetime(2026, 11, 23, 8, 0, tzinfo=plus2)) == "2026-11-23T06:00:00Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T06:00:00.123456789Z", datetime(2026, 11, 23, 6, 0, 0, 123456, tzinfo=timezone.utc)),
        ("2026-11-23T06:00:00Z", datetime(2026, 11, 23, 6, 0, 0, tzinfo=timezone.utc)),
        ("2026-11-23T08:00:00.5+02:00", datetime(2026, 11, 23, 6, 0, 0, 500000, tzinfo=timezone.utc)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected


def test_naive_eta_means_utc_and_go_zero_time_means_none() -> None:
    assert Signature("t", eta=datetime(2030, 1, 1)).eta == datetime(2030, 1, 1, tzinfo=timezone.utc)
    sig = decode_signature(b'{"Name":"t","ETA":"0001-01-01T00:00:00Z"}')
    assert sig.eta is None


# -- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1,2]", "expected a JSON object"),
        (b'{"UUID":"x"}', "Name"),
        (b'{"Name":""}', "Name"),
        (b'{"Name":5}', "Name"),
        (b'{"Name":"a","Args":{"a":1}}', "Args"),
        (b'{"Name":"a","Args":[{"Type":"int8","Value":300}]}', "Args[0]"),
        (b'{"Name":"a","Args":[{"Value":1}]}', "Args[0].Type"),
        (b'{"Name":"a","Args":[{"Type":"nope","Value":1}]}', "unsupported type"),
        (b'{"Name":"a","ETA":"tomorrow"}', "ETA"),
        (b'{"Name":"a","Priority":300}', "Priority"),
        (b'{"Name":"a","RetryCount":"3"}', "RetryCount"),
        (b'{"Name":"a","Immutable":"yes"}', "Immutable"),
        (b'{"Name":"a","OnSuccess":[{"Name":""}]}', "OnSuccess[0].Name"),
        (b'{"Name":"a","ChordCallback":{"Args":5,"Name":"b"}}', "ChordCallback.Args"),
        (b'{"Name":"a","Headers":[1]}', "Headers"),
    ],
)
def test_malformed_messages_raise_decode_error_saying_what(raw: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_signature(raw)
    assert fragment in str(info.value)
    assert info.value.raw == raw


def test_deeply_nested_message_is_a_decode_error_not_a_crash() -> None:
    raw = b'{"Name":"a","ChordCallback":' * 3000 + b'{"Name":"z"}' + b"}" * 3000
    with pytest.raises(DecodeError):
        decode_signature(raw)


# -- task states and group meta -------------------------------------------------------------


def test_go_task_state_fixture_decodes() -> None:
    st = decode_task_state(fixture("task_state_success.json"))
    assert st.state == "SUCCESS" and st.is_success and st.is_completed
    assert st.task_name == "add" and st.ttl == 3600
    assert st.results is not None
    assert [r.value for r in st.results] == [2, b"hi", {"A": 1}]  # unknown Go types keep JSON
    assert st.created_at == datetime(2026, 11, 23, 6, 0, 0, 123456, tzinfo=timezone.utc)


def test_task_state_encoding_matches_go() -> None:
    st = TaskState(
        task_uuid="task_1",
        state="FAILURE",
        task_name="add",
        error="boom",
        created_at=datetime(2026, 11, 23, 6, tzinfo=timezone.utc),
        ttl=3600,
    )
    assert encode_task_state(st) == (
        b'{"TaskUUID":"task_1","TaskName":"add","State":"FAILURE","Results":null,"Error":"boom",'
        b'"CreatedAt":"2026-11-23T06:00:00Z","TTL":3600}'
    )
    assert decode_task_state(encode_task_state(st)) == st


def test_group_meta_round_trip_and_go_fixture() -> None:
    raw = fixture("group_meta.json")
    meta = decode_group_meta(raw)
    assert meta.task_uuids == ["task_a", "task_b"] and not meta.chord_triggered
    assert encode_group_meta(meta) == raw
    assert decode_group_meta(encode_group_meta(GroupMeta("group_x", ["a"], True))).chord_triggered


@pytest.mark.parametrize(
    "raw",
    [b"{}", b'{"State":"DONE"}', b'{"State":"SUCCESS","Results":5}', b'{"State":"SUCCESS","TTL":"x"}', b"[]", b"{"],
)
def test_malformed_task_states_raise_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_task_state(raw)


def test_signature_copy_is_deep() -> None:
    sig = Signature("a", args=[1], on_success=[Signature("b")])
    cp = sig.copy()
    cp.on_success[0].args.append(Arg("int64", 5))
    assert sig.on_success[0].args == []


# -- strings that are not Unicode: lone surrogates (issue 17, D1) ----------------------------


@pytest.mark.parametrize(
    ("raw", "name", "uuid"),
    [
        (b'{"UUID":"task_1","Name":"x\\ud800"}', "x\ufffd", "task_1"),
        (b'{"UUID":"task_\\uDC00","Name":"x"}', "x", "task_\ufffd"),
        (b'{"UUID":"t","Name":"a\\ud800\\ud800b"}', "a\ufffd\ufffdb", "t"),  # two lone highs: two U+FFFD
        (b'{"UUID":"t","Name":"\\ud83d\\ude00"}', "\U0001f600", "t"),  # a valid pair stays one character
        (b'{"UUID":"t","Name":"\\\\ud800"}', "\\ud800", "t"),  # an escaped backslash: no surrogate at all
    ],
)
def test_lone_surrogates_decode_to_the_replacement_character_like_go(raw: bytes, name: str, uuid: str) -> None:
    # Go's encoding/json decodes an invalid surrogate escape to U+FFFD; a message holding one must
    # never decode to a str that cannot be encoded again (it would be stuck in every requeue path).
    sig = decode_signature(raw)
    assert (sig.name, sig.uuid) == (name, uuid)
    assert decode_signature(encode_signature(sig)) == sig


def test_lone_surrogates_anywhere_in_a_message_are_replaced() -> None:
    raw = (
        b'{"UUID":"t","Name":"n","Headers":{"k\\ud800":["v\\udfff",{"x":"\\ud800"}]},'
        b'"Args":[{"Type":"string","Value":"a\\ud800"},{"Type":"[]string","Value":["\\udc00"]},'
        b'{"Type":"map[string]interface {}","Value":{"\\ud800":"y"}}],'
        b'"OnSuccess":[{"Name":"cb\\ud800","UUID":"u\\ud800"}]}'
    )
    sig = decode_signature(raw)
    assert sig.headers == {"k\ufffd": ["v\ufffd", {"x": "\ufffd"}]}
    assert sig.arg_values == ["a\ufffd", ["\ufffd"], {"\ufffd": "y"}]
    assert (sig.on_success[0].name, sig.on_success[0].uuid) == ("cb\ufffd", "u\ufffd")
    encode_signature(sig)
    state = decode_task_state(
        b'{"TaskUUID":"t\\ud800","State":"SUCCESS","Results":[{"Type":"string","Value":"\\ud800"}]}'
    )
    assert state.task_uuid == "t\ufffd" and state.results is not None and state.results[0].value == "\ufffd"


def test_python_strings_with_lone_surrogates_encode_as_go_writes_invalid_utf8() -> None:
    # Go's encoder writes ``\ufffd`` for what is not valid UTF-8; a Python str can hold a lone
    # surrogate (os.fsdecode of a bad file name...): it is written the same way, never an error.
    sig = Signature("n\udc80", args=["a\ud800b"], uuid="task_\udfff", headers={"k": "\ud800"})
    body = encode_signature(sig)
    assert b'"Name":"n\\ufffd"' in body and b'"UUID":"task_\\ufffd"' in body
    assert b'"Value":"a\\ufffdb"' in body and b'"Headers":{"k":"\\ufffd"}' in body
    back = decode_signature(body)
    assert (back.name, back.uuid, back.arg_values) == ("n\ufffd", "task_\ufffd", ["a\ufffdb"])
    state = encode_task_state(TaskState("t", "SUCCESS", "n", [TaskResult("string", "\ud800")]))
    assert b'"Value":"\\ufffd"' in state
    meta = encode_group_meta(GroupMeta("g\ud800", ["t\ud800"]))
    assert decode_group_meta(meta).task_uuids == ["t\ufffd"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"UUID":"t","Name":"n","Headers":{"x":NaN}}',
        b'{"UUID":"t","Name":"n","Headers":{"x":-Infinity}}',
        b'{"UUID":"t","Name":"n","Headers":{"x":1e999}}',
        b'{"UUID":"t","Name":"n","Args":[{"Type":"interface {}","Value":[Infinity]}]}',
        b'{"UUID":"t","Name":"n\xed\xa0\x80"}',  # a surrogate in UTF-8 bytes is not UTF-8
    ],
)
def test_what_go_cannot_read_is_a_decode_error_not_a_message_that_cannot_be_re_encoded(raw: bytes) -> None:
    # NaN, infinities and numbers beyond float64 are not JSON for Go: decoding them would give a
    # message that cannot be encoded again (and would be stuck in a requeue path).
    with pytest.raises(DecodeError, match="not valid JSON"):
        decode_signature(raw)
