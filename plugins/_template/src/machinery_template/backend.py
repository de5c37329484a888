"""``TemplateBackend``: stores task states, results and group metadata.

TEMPLATE: a skeleton. Implement the six primitives with your client (``self.client``), storing
records as Go Machinery does with the core codec (``encode_task_state``/``decode_task_state``,
``encode_group_meta``/``decode_group_meta`` from ``machinery.plugin``; a store of fields uses
``wire.task_state_to_document`` and its inverse), so Go field names are written nowhere else.

The Go-visible operations (``set_state_*``, ``group_completed``, ``trigger_chord``...) are
``@final`` in the core and built on these primitives: never override one. Where your store
behaves differently, declare a capability (``stores_ttl``, ``counts_completed``). Optional, for
speed: ``_load_states`` (one round trip), ``_store_states`` (one round trip, or deferred, with
the ``Completion`` it returns) and ``wait_for`` (block instead of polling). The reference is
the core's ``memory://`` backend (``machinery/builtin/memory/backend.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from machinery.plugin import Backend
from machinery_template import ENV_OPTIONS
from machinery_template.transport import TemplateTransport

if TYPE_CHECKING:
    from machinery.plugin import Config, GroupMeta, TaskState

__all__ = ["TemplateBackend"]


class TemplateBackend(Backend):
    """Result backend for ``template://`` URLs: one record per task or group UUID.

    :param url: the URL.
    :param config: the core configuration (``results_expire_in``: see ``self.lifetime()``).
    :param transport: the transport handing it out (None: the shared one of ``url`` and ``config``).
    """

    # TEMPLATE: True when records expire after results_expire_in (self.lifetime() seconds; None
    # keeps them), and when they survive a restart of the server (False for caches).
    supports_expiry: ClassVar[bool] = True
    persistent: ClassVar[bool] = True
    config_section: ClassVar[str | None] = "template"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS

    def __init__(self, url: str, config: Config, *, transport: TemplateTransport | None = None) -> None:
        super().__init__(url, config)
        held = TemplateTransport.attach(self, url, config, transport)
        self.transport = held
        self.options = held.options

    @property
    def client(self) -> Any:
        """The transport's connection (opened on first use)."""
        assert self.transport is not None
        return self.transport.connection_for(self)

    def _store_state(self, state: TaskState) -> None:
        """Write (replace) the record of ``state.task_uuid``, with expiry."""
        raise NotImplementedError("TEMPLATE: TemplateBackend._store_state: write encode_task_state(state)")

    def _load_state(self, task_uuid: str) -> TaskState | None:
        """Read the task's record; None when absent or expired."""
        raise NotImplementedError("TEMPLATE: TemplateBackend._load_state: read and decode_task_state")

    def _store_group(self, meta: GroupMeta) -> None:
        """Write (replace) the record of ``meta.group_uuid``, with expiry."""
        raise NotImplementedError("TEMPLATE: TemplateBackend._store_group: write encode_group_meta(meta)")

    def _load_group(self, group_uuid: str) -> GroupMeta | None:
        """Read the group's record; None when absent or expired."""
        raise NotImplementedError("TEMPLATE: TemplateBackend._load_group: read and decode_group_meta")

    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        """Set the group's ``chord_triggered``; True for exactly one caller, in any process.

        Atomic on the server: a compare-and-set, a conditional update, a script... never
        read-then-write from the client.
        """
        raise NotImplementedError("TEMPLATE: TemplateBackend._mark_chord_triggered: an atomic conditional update")

    def _delete(self, uuid: str) -> None:
        """Delete a record; deleting what is absent is fine."""
        raise NotImplementedError("TEMPLATE: TemplateBackend._delete: delete the record")

    def close(self) -> None:
        """Release the transport (its connection is closed with the last role). Idempotent."""
        if self.transport is not None:
            self.transport.release(self)
