"""``machinery.plugin``: everything a transport plugin's author needs, in one namespace.

A plugin imports from here (and its tests from :mod:`machinery.testing`), never from the
core's other modules, whose layout may change::

    from machinery.plugin import AsyncPollingBroker, BrokerConnectionError, Delivery, hookimpl

What is here:

- the hook marker and registration: :data:`hookimpl`, :class:`TransportRegistry` (what
  ``machinery_register_transports`` receives) and :class:`Transport` (one URL's connection,
  options and roles), and :data:`Register` (the older role-by-role registration);
- the contracts: :class:`Broker`, :class:`Backend`, :class:`Lock`, :class:`Delivery`, and the
  consume template: :class:`PollingBroker`, :class:`AsyncPollingBroker` (asyncio clients),
  :class:`EventLoopThread`, :class:`PushBroker` (clients that push to a callback) with its
  :class:`Inbox` and :class:`Subscription`; :func:`describe_capabilities`; :class:`Completion`
  (what a backend's deferred ``_store_states`` returns);
- configuration: :class:`Config`, :func:`parse_options`, :func:`redact_url`;
- the error tree: :class:`MachineryError` and every subclass a transport raises or translates to;
- what optional capabilities exchange: :class:`Revocation` (revoke), :class:`TaskEvent` and
  :class:`WorkerEvent` (event hooks), :data:`ZERO_TIME` (Go's zero time in stored states),
  :func:`live_workers` and :class:`WorkerInfo` (the worker registry);
- for a plugin's own CLI command (``machinery_cli_commands``): :func:`build_server`, the server
  the parsed ``--config``/``--broker``/``--backend``/``--app`` options describe;
- the wire codec (Go Machinery's JSON): :class:`Signature`, :func:`encode_signature`,
  :func:`decode_signature`, :func:`eta_of`, task states and group metadata and their codecs,
  :func:`parse_time` / :func:`format_time`, and the whole :mod:`machinery.wire` package as
  :data:`wire`: the Go field names as constants (``wire.SIGNATURE.routing_key``,
  ``wire.TASK_STATE.ttl``, ``wire.GROUP_META.chord_triggered``) and the document mappers
  (``wire.task_state_to_document`` and ``wire.task_state_from_mapping``...) for backends that
  store fields;
- the conformance suite's entry points (:class:`BrokerConformance`, :class:`BrokerOracle`,
  :func:`require_server`...), loaded from :mod:`machinery.testing` only when asked for, since
  that imports pytest.

Names load on first use (PEP 562), so a plugin's hook module importing :data:`hookimpl` from
here stays as cheap as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from machinery import wire
    from machinery._hookimpl import hookimpl
    from machinery.backend_ops import Completion
    from machinery.cli_common import build_server
    from machinery.config import Config, parse_options, redact_url
    from machinery.consume import PollingBroker, eta_of
    from machinery.consume_adapters import AsyncPollingBroker, EventLoopThread, Inbox, PushBroker, Subscription
    from machinery.errors import (
        ArgumentTypeError,
        BackendConnectionError,
        BackendError,
        BrokerAuthenticationError,
        BrokerConnectionError,
        BrokerError,
        ConfigError,
        DecodeError,
        LockError,
        LockNotAcquired,
        MachineryError,
        PluginLoadError,
        PublishError,
        StateNotFoundError,
        UnknownSchemeError,
    )
    from machinery.events import TaskEvent, WorkerEvent
    from machinery.interfaces import Backend, Broker, DeadLetter, Delivery, Lock, describe_capabilities
    from machinery.plugins import Register
    from machinery.registry import WorkerInfo, live_workers
    from machinery.revoke import Revocation
    from machinery.state import ZERO_TIME, GroupMeta, State, TaskResult, TaskState
    from machinery.testing import (
        BackendConformance,
        BackendOracle,
        BrokerConformance,
        BrokerOracle,
        ControlConformance,
        LockConformance,
        PoolConformance,
        WorkflowConformance,
        require_capability,
        require_server,
    )
    from machinery.transport import Transport, TransportRegistry
    from machinery.wire import (
        Signature,
        decode_group_meta,
        decode_signature,
        decode_task_state,
        encode_group_meta,
        encode_signature,
        encode_task_state,
        format_time,
        group_meta_from_mapping,
        group_meta_to_document,
        new_uuid,
        parse_time,
        task_state_from_mapping,
        task_state_to_document,
    )

#: Public name -> the module that defines it.
_LAZY = {
    "hookimpl": "machinery._hookimpl",
    "wire": "machinery",
    "Register": "machinery.plugins",
    "Transport": "machinery.transport",
    "TransportRegistry": "machinery.transport",
    "Config": "machinery.config",
    "parse_options": "machinery.config",
    "redact_url": "machinery.config",
    "AsyncPollingBroker": "machinery.consume_adapters",
    "EventLoopThread": "machinery.consume_adapters",
    "PollingBroker": "machinery.consume",
    "PushBroker": "machinery.consume_adapters",
    "Inbox": "machinery.consume_adapters",
    "Subscription": "machinery.consume_adapters",
    "eta_of": "machinery.consume",
    "Backend": "machinery.interfaces",
    "Completion": "machinery.backend_ops",
    "Broker": "machinery.interfaces",
    "DeadLetter": "machinery.interfaces",
    "Delivery": "machinery.interfaces",
    "Lock": "machinery.interfaces",
    "describe_capabilities": "machinery.interfaces",
    "GroupMeta": "machinery.state",
    "State": "machinery.state",
    "TaskResult": "machinery.state",
    "TaskState": "machinery.state",
    "ZERO_TIME": "machinery.state",
    "TaskEvent": "machinery.events",
    "WorkerEvent": "machinery.events",
    "Revocation": "machinery.revoke",
    "WorkerInfo": "machinery.registry",
    "live_workers": "machinery.registry",
    "build_server": "machinery.cli_common",
    **dict.fromkeys(
        (
            "ArgumentTypeError",
            "BackendConnectionError",
            "BackendError",
            "BrokerAuthenticationError",
            "BrokerConnectionError",
            "BrokerError",
            "ConfigError",
            "DecodeError",
            "LockError",
            "LockNotAcquired",
            "MachineryError",
            "PluginLoadError",
            "PublishError",
            "StateNotFoundError",
            "UnknownSchemeError",
        ),
        "machinery.errors",
    ),
    **dict.fromkeys(
        (
            "Signature",
            "decode_group_meta",
            "decode_signature",
            "decode_task_state",
            "encode_group_meta",
            "encode_signature",
            "encode_task_state",
            "format_time",
            "group_meta_from_mapping",
            "group_meta_to_document",
            "new_uuid",
            "parse_time",
            "task_state_from_mapping",
            "task_state_to_document",
        ),
        "machinery.wire",
    ),
    **dict.fromkeys(
        (
            "BackendConformance",
            "BackendOracle",
            "BrokerConformance",
            "BrokerOracle",
            "ControlConformance",
            "LockConformance",
            "PoolConformance",
            "WorkflowConformance",
            "require_capability",
            "require_server",
        ),
        "machinery.testing",
    ),
}

__all__ = [
    "WorkerInfo",
    "build_server",
    "live_workers",
    "ArgumentTypeError",
    "AsyncPollingBroker",
    "Backend",
    "BackendConformance",
    "BackendConnectionError",
    "BackendError",
    "BackendOracle",
    "Broker",
    "BrokerAuthenticationError",
    "BrokerConformance",
    "BrokerConnectionError",
    "BrokerError",
    "BrokerOracle",
    "Completion",
    "Config",
    "ConfigError",
    "ControlConformance",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "EventLoopThread",
    "GroupMeta",
    "Inbox",
    "Lock",
    "LockConformance",
    "LockError",
    "LockNotAcquired",
    "MachineryError",
    "PluginLoadError",
    "PollingBroker",
    "PoolConformance",
    "PublishError",
    "PushBroker",
    "Register",
    "Revocation",
    "Signature",
    "State",
    "StateNotFoundError",
    "Subscription",
    "TaskEvent",
    "TaskResult",
    "TaskState",
    "Transport",
    "TransportRegistry",
    "UnknownSchemeError",
    "WorkerEvent",
    "WorkflowConformance",
    "ZERO_TIME",
    "decode_group_meta",
    "decode_signature",
    "decode_task_state",
    "describe_capabilities",
    "encode_group_meta",
    "encode_signature",
    "encode_task_state",
    "eta_of",
    "format_time",
    "group_meta_from_mapping",
    "group_meta_to_document",
    "hookimpl",
    "new_uuid",
    "parse_options",
    "parse_time",
    "redact_url",
    "require_capability",
    "require_server",
    "task_state_from_mapping",
    "task_state_to_document",
    "wire",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
