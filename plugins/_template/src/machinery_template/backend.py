"""``TemplateBackend``: stores task states, results and group metadata.

TEMPLATE: a working example whose store lives in this process (:class:`_ExampleStore`). For a
real store, replace it with your client and keep the six primitives' contracts (read
:class:`machinery.plugin.Backend`). Store records as Go Machinery does, with the core codec
(``encode_task_state``/``decode_task_state``, ``encode_group_meta``/``decode_group_meta``):
Go field and type names are written nowhere else.

The Go-visible operations (``set_state_*``, ``group_completed``, ``trigger_chord``...) are
``@final`` in the core and built on these primitives: never override one (the class statement
raises ``TypeError``). Where your store behaves differently, declare a capability
(``stores_ttl``, ``counts_completed``). Optional, for speed: ``_load_states`` (one round trip),
``_store_states`` (one round trip, or deferred: see its docstring and the ``Completion`` it
returns) and ``wait_for`` (block instead of polling).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from machinery.plugin import Backend, Completion
from machinery.plugin import decode_group_meta, decode_task_state, encode_group_meta, encode_task_state
from machinery.plugin import GroupMeta, TaskState
from machinery_template.broker import server_name

if TYPE_CHECKING:
    from machinery.plugin import Config

__all__ = ["TemplateBackend", "example_store"]


@dataclass
class _ExampleStore:
    """TEMPLATE: stands in for your store. Delete it when you use a real client."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    items: dict[str, tuple[float, bytes]] = field(default_factory=dict)  # key -> (expires at, Go JSON)

    def get(self, key: str) -> bytes | None:
        entry = self.items.get(key)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None


_STORES: dict[str, _ExampleStore] = {}
_STORES_LOCK = threading.Lock()


def example_store(name: str) -> _ExampleStore:
    """The in-process example store called ``name`` (created on first use)."""
    with _STORES_LOCK:
        return _STORES.setdefault(name, _ExampleStore())


class TemplateBackend(Backend):
    """Result backend for ``template://<name>`` URLs: one record per task or group UUID."""

    # TEMPLATE: True when records expire after results_expire_in, and when they survive a
    # restart of the server (False for caches and for this in-process example).
    supports_expiry: ClassVar[bool] = True
    persistent: ClassVar[bool] = False

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        # Parse now (a bad URL fails when the Server is built); TEMPLATE: connect lazily.
        self._store = example_store(server_name(url, "result_backend"))

    def _deadline(self) -> float:
        secs = self.lifetime()  # results_expire_in as Go reads it (0: 3600 s); None: keep forever
        return time.monotonic() + secs if secs is not None else float("inf")

    def _store_state(self, state: TaskState) -> None:
        """Write (replace) the task's record, with expiry."""
        with self._store.lock:
            self._store.items[state.task_uuid] = (self._deadline(), encode_task_state(state))

    def _load_state(self, task_uuid: str) -> TaskState | None:
        """Read the task's record; None when absent or expired."""
        raw = self._store.get(task_uuid)
        return None if raw is None else decode_task_state(raw)

    def _load_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """Read several records (TEMPLATE: one round trip: MGET, ``$in``, batch get...)."""
        return [self._load_state(u) for u in task_uuids]

    def _store_states(self, states: Sequence[TaskState], *, wait: bool = True) -> Completion:
        """Write several records (TEMPLATE: one round trip: MSET, a bulk write, a pipeline...).

        With ``wait=False`` a store that batches writes of many threads may return before they
        are stored, with a pending ``Completion()`` it resolves (``completion.resolve(error)``)
        from whatever thread learns the outcome; the worker acknowledges the task's message
        only then. This example writes at once, so ``wait`` makes no difference."""
        deadline = self._deadline()
        with self._store.lock:
            for st in states:
                self._store.items[st.task_uuid] = (deadline, encode_task_state(st))
        return Completion.stored()

    def _store_group(self, meta: GroupMeta) -> None:
        """Write the group's record."""
        with self._store.lock:
            self._store.items[meta.group_uuid] = (self._deadline(), encode_group_meta(meta))

    def _load_group(self, group_uuid: str) -> GroupMeta | None:
        """Read the group's record; None when absent or expired."""
        raw = self._store.get(group_uuid)
        return None if raw is None else decode_group_meta(raw)

    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        """Set the group's ``chord_triggered`` flag; True for exactly one caller.

        TEMPLATE: this must be atomic on the server, across processes and machines: a
        compare-and-set, a conditional update, a Lua script, ``find_one_and_update``... never
        read-then-write from the client.
        """
        with self._store.lock:
            meta = self._load_group(group_uuid)
            if meta is None or meta.chord_triggered:
                return False
            meta.chord_triggered = True
            self._store.items[group_uuid] = (self._store.items[group_uuid][0], encode_group_meta(meta))
            return True

    def _delete(self, uuid: str) -> None:
        """Delete a record; deleting what is absent is fine."""
        with self._store.lock:
            self._store.items.pop(uuid, None)
