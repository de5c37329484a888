"""Workflows as graphs: from any task (or group) UUID, the whole group, chain or chord it is in.

Edges come from the signatures the recorder stored (``on_success`` is a chain's next step,
``chord_callback`` a chord's callback, ``on_error`` an error callback) and from the parent
links it wrote, so the graph is found from any member. Group members come from the result
backend's group metadata, so a group sent before the dashboard started (or by a worker without
the plugin) is drawn too; each node's state is the backend's stored state where there is one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from machinery.plugin import DecodeError

if TYPE_CHECKING:
    from machinery.plugin import Backend, GroupMeta, TaskState
    from machinery_dashboard.store import EventStore, TaskRecord

__all__ = ["MAX_NODES", "Graph", "backend_group", "backend_state", "build_graph", "display_state", "signature_doc"]

#: Nodes drawn at most (a bigger workflow is cut, and says so).
MAX_NODES = 2000


def backend_state(backend: Backend, uuid: str) -> TaskState | None:
    """The backend's stored state of ``uuid``, or None: also when the key holds something else
    (Go's Redis and memcache backends keep groups and task states in one key space)."""
    try:
        return backend.get_state(uuid)
    except DecodeError:
        return None


def backend_group(backend: Backend, uuid: str) -> GroupMeta | None:
    """The backend's group metadata of ``uuid``, or None (also when the key holds a task state)."""
    try:
        return backend.get_group_meta(uuid)
    except DecodeError:
        return None


def display_state(state: str, error: str) -> str:
    """The state shown: ``REVOKED`` for a FAILURE whose error is ``revoked``."""
    return "REVOKED" if state == "FAILURE" and error.strip() == "revoked" else state


@dataclass
class Graph:
    """Nodes (``uuid``, ``name``, ``state``, ``group_uuid``, ``layer``) and edges
    (``from``, ``to``, ``kind``: ``next``, ``chord`` or ``error``)."""

    root: str
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: list[dict[str, str]] = field(default_factory=list)
    kind: str = "task"
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, nodes in layer order."""
        nodes = sorted(self.nodes.values(), key=lambda n: (n["layer"], n["order"]))
        return {"root": self.root, "kind": self.kind, "truncated": self.truncated, "nodes": nodes, "edges": self.edges}


def signature_doc(rec: TaskRecord | None) -> dict[str, Any] | None:
    """The recorded signature (:func:`machinery_dashboard.recorder.describe_signature`), or None."""
    if rec is None or not rec.signature:
        return None
    try:
        doc = json.loads(rec.signature)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def build_graph(uuid: str, store: EventStore | None, backend: Backend) -> Graph | None:
    """The workflow of ``uuid`` (a task's or a group's), or None when nothing is known of it."""
    records: dict[str, TaskRecord | None] = {}

    def record(u: str) -> TaskRecord | None:
        if u not in records:
            records[u] = store.get(u) if store is not None else None
        return records[u]

    group_members: dict[str, list[str]] = {}

    def members(group_uuid: str) -> list[str]:
        if group_uuid not in group_members:
            meta = backend_group(backend, group_uuid)
            group_members[group_uuid] = list(meta.task_uuids) if meta is not None else []
        return group_members[group_uuid]

    start = uuid
    if record(uuid) is None and backend_state(backend, uuid) is None:
        if not members(uuid):
            return None
        start = members(uuid)[0]
    # up to the first task: parent links (chain predecessors, chord members)
    seen = {start}
    while store is not None and len(seen) < MAX_NODES:
        parent = store.parent_of(start)
        if not parent or parent in seen:
            break
        seen.add(parent)
        start = parent
    rec = record(start)
    group = rec.group_uuid if rec is not None else (uuid if members(uuid) and start in members(uuid) else "")
    roots = members(group) if group and members(group) else [start]

    g = Graph(root=uuid)
    names: dict[str, str] = {}
    queue: list[tuple[str, int]] = [(r, 0) for r in roots]
    layers: dict[str, int] = {}
    order = 0
    while queue:
        u, layer = queue.pop(0)
        if layers.get(u, -1) >= layer:
            continue
        if len(layers) >= MAX_NODES and u not in layers:
            g.truncated = True
            continue
        first = u not in layers
        layers[u] = layer
        if first:
            g.nodes[u] = {"uuid": u, "name": names.get(u, ""), "state": "", "group_uuid": "", "layer": layer,
                          "order": order}
            order += 1
        g.nodes[u]["layer"] = layer
        if not first:
            continue
        rec = record(u)
        sig = signature_doc(rec)
        gu = rec.group_uuid if rec is not None else ""
        if gu:
            g.nodes[u]["group_uuid"] = gu
            for m in members(gu):
                if m not in layers:
                    queue.append((m, layer))
        if sig is None:
            continue
        for i, (child_uuid, child_name, kind) in enumerate(sig.get("next") or ()):
            cu = child_uuid or f"{u}:{kind}:{i}"
            names.setdefault(cu, child_name)
            if cu in g.nodes and not g.nodes[cu]["name"]:
                g.nodes[cu]["name"] = child_name
            edge = {"from": u, "to": cu, "kind": kind}
            if edge not in g.edges:
                g.edges.append(edge)
            queue.append((cu, layer + 1))
    _states(g, records, backend)
    kinds = {e["kind"] for e in g.edges}
    groups = {n["group_uuid"] for n in g.nodes.values() if n["group_uuid"]}
    g.kind = "chord" if "chord" in kinds else "chain" if "next" in kinds else "group" if groups else "task"
    return g


def _states(g: Graph, records: dict[str, TaskRecord | None], backend: Backend) -> None:
    for u, node in g.nodes.items():
        rec = records.get(u)
        st = None if ":" in u and u.count(":") >= 2 else backend_state(backend, u)
        if st is not None:
            node["state"] = display_state(st.state, st.error)
            node["name"] = node["name"] or st.task_name
        elif rec is not None:
            node["state"] = display_state(rec.state, rec.error)
        else:
            node["state"] = "PENDING"
        if rec is not None:
            node["name"] = node["name"] or rec.name
            node["runtime"] = rec.runtime
            node["retries"] = rec.retries
