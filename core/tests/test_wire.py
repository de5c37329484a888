"""The ``machinery.wire`` package: its field-name constants are the keys the codec writes, the
compatibility module re-exports the same objects, the document mappers invert, and no plugin
recovers a Go field name by encoding a probe object."""

from __future__ import annotations

import ast
import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

import machinery.signature
from machinery import plugin, wire
from machinery.progress import Progress
from machinery.state import GroupMeta, TaskResult, TaskState

ROOT = Path(__file__).resolve().parents[2]
WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)


def _full_signature() -> wire.Signature:
    return wire.Signature(
        "add",
        args=[wire.Arg("int64", 1, name="a"), 2.5],
        uuid="task_1",
        routing_key="q",
        eta=WHEN,
        group_uuid="group_1",
        group_task_count=2,
        headers={"k": "v"},
        priority=3,
        immutable=True,
        retry_count=1,
        retry_timeout=2,
        on_success=[wire.Signature("cb")],
        on_error=[wire.Signature("err")],
        chord_callback=wire.Signature("chord"),
        broker_message_group_id="m",
        sqs_receipt_handle="h",
        stop_task_deletion_on_error=True,
        ignore_when_task_not_registered=True,
    )


def test_signature_keys_are_the_constants_in_go_order() -> None:
    doc = json.loads(wire.encode_signature(_full_signature()))
    assert tuple(doc) == wire.SIGNATURE.names()
    assert tuple(doc[wire.SIGNATURE.args][0]) == wire.ARG.names()
    assert wire.SIGNATURE.routing_key == "RoutingKey" and doc[wire.SIGNATURE.routing_key] == "q"


def test_every_signature_attribute_has_its_constant() -> None:
    attrs = [f.name for f in dataclasses.fields(wire.Signature)]
    consts = list(wire.SIGNATURE.mapping())
    assert sorted(attrs) == sorted(consts)
    sig = _full_signature()
    doc = json.loads(wire.encode_signature(sig))
    for name in ("uuid", "name", "routing_key", "group_uuid", "priority", "retry_count", "sqs_receipt_handle"):
        assert doc[getattr(wire.SIGNATURE, name)] == getattr(sig, name), name
    state_attrs = {f.name for f in dataclasses.fields(TaskState)}
    assert set(wire.TASK_STATE.mapping()) | {"progress"} == state_attrs
    assert set(wire.GROUP_META.mapping()) == {f.name for f in dataclasses.fields(GroupMeta)}


def test_task_state_and_group_keys_are_the_constants() -> None:
    state = TaskState("task_1", "SUCCESS", task_name="add", results=[TaskResult("int64", 3)], created_at=WHEN, ttl=9)
    doc = json.loads(wire.encode_task_state(state))
    assert tuple(doc) == wire.TASK_STATE.names()
    assert tuple(doc[wire.TASK_STATE.results][0]) == wire.TASK_RESULT.names()
    assert doc[wire.TASK_STATE.ttl] == 9 and wire.TASK_STATE.ttl == "TTL"
    state.progress = Progress(1, 2)
    assert tuple(json.loads(wire.encode_task_state(state))) == (*wire.TASK_STATE.names(), wire.TASK_STATE.progress)
    meta = GroupMeta("group_1", ["a"], chord_triggered=True, created_at=WHEN, ttl=4)
    gdoc = json.loads(wire.encode_group_meta(meta))
    assert tuple(gdoc) == wire.GROUP_META.names()
    assert gdoc[wire.GROUP_META.chord_triggered] is True and wire.GROUP_META.chord_triggered == "ChordTriggered"


def test_document_mappers_invert() -> None:
    state = TaskState("task_1", "SUCCESS", results=[TaskResult("[]byte", b"\x00x"), TaskResult("float64", 0.5)])
    state.created_at = WHEN
    doc = wire.task_state_to_document(state)
    assert doc[wire.TASK_STATE.results][0][wire.TASK_RESULT.value] == "AHg="  # base64, as Go stores it
    assert doc[wire.TASK_STATE.created_at] == "2024-05-06T07:08:09.123456Z"
    assert wire.task_state_from_mapping(doc) == state
    meta = GroupMeta("group_1", ["a", "b"], created_at=WHEN)
    assert wire.group_meta_from_mapping(wire.group_meta_to_document(meta)) == meta


def test_compatibility_module_reexports_the_same_objects() -> None:
    for name in machinery.signature.__all__:
        assert getattr(machinery.signature, name) is getattr(wire, name, None), name
    assert machinery.signature.Signature is wire.Signature is plugin.Signature
    assert plugin.wire is wire


def test_copy_is_deep_and_equal() -> None:
    sig = _full_signature()
    cp = sig.copy()
    assert cp == sig and cp is not sig
    cp.headers["k"] = "changed"
    cp.on_success[0].args.append(wire.Arg("int64", 5))
    assert sig.headers == {"k": "v"} and sig.on_success[0].args == []
    assert wire.encode_signature(sig.copy()) == wire.encode_signature(sig)
    fresh = wire.Signature("x")
    assert wire.encode_signature(fresh.copy()) == wire.encode_signature(fresh)  # nil headers stay null


def _import_time_names(tree: ast.Module) -> set[str]:
    """Names module-level code calls or passes along, following the module's own functions
    that it calls (``ROUTING = _routing_field()`` reaches what ``_routing_field`` calls)."""
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    seen: set[str] = set()
    todo: list[ast.AST] = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.ClassDef):  # class bodies run at import, their methods do not
            todo.extend(n for n in node.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
            continue
        for sub in ast.walk(node):
            name = sub.attr if isinstance(sub, ast.Attribute) else sub.id if isinstance(sub, ast.Name) else None
            if name and name not in seen:
                seen.add(name)
                if name in functions:
                    todo.extend(functions[name].body)
    return seen


@pytest.mark.parametrize("path", sorted(ROOT.glob("plugins/*/src/**/*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_plugin_encodes_at_import_time(path: Path) -> None:
    """Go field names come from ``machinery.plugin.wire``, never from encoding a probe object."""
    names = _import_time_names(ast.parse(path.read_text(encoding="utf-8")))
    encoders = {"encode_signature", "encode_task_state", "encode_group_meta", "task_state_to_document"}
    assert not encoders & names, f"{path.name} encodes at import time: {sorted(encoders & names)}"


def test_the_probe_check_finds_a_probe() -> None:
    direct = "ROUTING = next(k for k in json.loads(encode_signature(Signature('p', routing_key='x'))))\n"
    assert "encode_signature" in _import_time_names(ast.parse(direct))
    helper = "def _field(enc, obj):\n    return json.loads(enc(obj))\n\nKEY = _field(encode_task_state, None)\n"
    assert "encode_task_state" in _import_time_names(ast.parse(helper))
    called = "def _probe():\n    return encode_group_meta(None)\n\nFIELD = _probe()\n"
    assert "encode_group_meta" in _import_time_names(ast.parse(called))
    lazy = "def publish(sig):\n    return encode_signature(sig)\n"
    assert "encode_signature" not in _import_time_names(ast.parse(lazy))


@pytest.mark.parametrize("path", sorted((ROOT / "core/src/machinery/wire").glob("*.py")), ids=lambda p: p.name)
def test_wire_modules_stay_small(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 500


def test_wire_sits_below_the_rest_of_the_core() -> None:
    """The wire package imports (even for type checking) only the errors, the state records and
    progress, and its model does not know its codec: nothing in it can close an import circle."""
    allowed = {"machinery.errors", "machinery.state", "machinery.progress"}
    for path in sorted((ROOT / "core/src/machinery/wire").glob("*.py")):
        imported = {
            node.module
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("machinery")
        }
        outside = {m for m in imported if not m.startswith("machinery.wire")} - allowed
        assert not outside, f"{path.name} imports {sorted(outside)}"
        if path.name in ("model.py", "gotypes.py", "fields.py"):
            assert not imported & {"machinery.wire.codec", "machinery.wire.records"}, path.name
