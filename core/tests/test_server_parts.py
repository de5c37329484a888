"""The Server is a façade over a task Registry (pure), a Producer (the sends) and the transports;
the worker, the scheduler and the CLI use those parts, not the Server's internals."""

from __future__ import annotations

import argparse
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from machinery import Config, Server, Signature
from machinery.cli_common import build_server
from machinery.errors import TaskNotRegisteredError
from machinery.producer import Producer
from machinery.schedule import Scheduler
from machinery.task_registry import Registry
from machinery.testing.fixtures import use_transport
from machinery.workflow import Group


def _url() -> str:
    return f"memory://parts-{uuid.uuid4().hex}"


def _server(registry: Registry | None = None) -> Server:
    url = _url()
    return Server(Config(broker=url, result_backend=url, lock=url), registry=registry)


def test_the_registry_is_pure_and_shared_by_servers() -> None:
    registry = Registry()

    @registry.task
    def add(a: int, b: int) -> int:
        return a + b

    registry.register_task("mul", lambda a, b: a * b, rate_limit="5/s")
    one, two = _server(registry), _server(registry)
    try:
        assert one.registry is two.registry is registry
        assert one.get_registered_task_names() == two.get_registered_task_names() == ["add", "mul"]
        two.register_task("late", lambda: None)  # through either server, into the one registry
        assert one.is_task_registered("late") and "late" in registry and len(registry) == 3
        assert one.get_registered_task("mul").rate_limit is not None
        with pytest.raises(TaskNotRegisteredError):
            registry.get("nope")
        with pytest.raises(TaskNotRegisteredError):
            one.get_registered_task("nope")
    finally:
        one.close()
        two.close()


def test_a_server_registers_into_its_own_registry_by_default() -> None:
    a, b = _server(), _server()
    try:

        @a.task("x")
        def x() -> None:
            return None

        assert a.registry.tasks["x"].fn is x
        assert not b.is_task_registered("x")
        a.register_periodic_task("*/5 * * * *", "tick", Signature("x"))
        assert [e.name for e in a.registry.periodic_entries] == ["tick"]
        assert [e.name for e in a.periodic_entries] == ["tick"]
        with pytest.raises(ValueError, match="already registered"):
            a.register_periodic_task("* * * * *", "tick", Signature("x"))
    finally:
        a.close()
        b.close()


def test_the_producer_sends_on_its_own() -> None:
    server = _server()
    try:
        seen: list[str] = []
        producer = Producer(server.broker, server.backend, pre_publish=lambda s: seen.append(s.name))
        result = producer.send(Signature("solo"))
        assert seen == ["solo"]
        assert server.get_state(result.task_uuid).state == "PENDING"  # type: ignore[union-attr]
        assert [s.uuid for s in server.get_pending_tasks()] == [result.task_uuid]
        group = producer.send_group(Group([Signature("g1"), Signature("g2")]))
        assert seen == ["solo", "g1", "g2"]
        assert len(server.get_pending_tasks()) == 3 and len(group) == 2
    finally:
        server.close()


def test_the_server_sends_through_its_producer_and_handler() -> None:
    server = _server()
    try:
        seen: list[str] = []
        server.set_pre_publish_handler(lambda s: seen.append(s.name))
        assert server.producer.pre_publish is not None
        server.send_task(Signature("a"))
        server.producer.republish(Signature("b"))  # retries: published, no state stored
        assert seen == ["a", "b"]
        pending = server.get_pending_tasks()
        assert [s.name for s in pending] == ["a", "b"]
        assert server.get_state(pending[1].uuid) is None
    finally:
        server.close()


def test_use_transport_rebinds_the_producer_and_puts_it_back() -> None:
    server = _server()
    seen: list[str] = []
    server.set_pre_publish_handler(lambda s: seen.append(s.name))
    own = server.producer
    try:
        with use_transport(server):
            assert server.producer is not own and server.producer.broker is server.broker
            server.send_task(Signature("inside"))
            assert [s.name for s in server.get_pending_tasks()] == ["inside"]
        assert server.producer.broker is server.broker is own.broker
        assert server.get_pending_tasks() == []
        assert seen == ["inside"]  # the handler stays
    finally:
        server.close()


def test_build_server_rebinds_the_apps_registry_and_handler(tmp_path: Path) -> None:
    app = _server()

    def handler(sig: Signature) -> None:
        return None

    app.register_task("t", lambda: None)
    app.register_periodic_task("* * * * *", "every-minute", Signature("t"))
    app.set_pre_publish_handler(handler)
    module = tmp_path / "parts_app_module.py"
    module.write_text("app = None\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        import parts_app_module

        parts_app_module.app = app  # type: ignore[attr-defined]
        url = _url()
        args = argparse.Namespace(app="parts_app_module:app", config=None, broker=url, backend=url)
        server = build_server(args)
        try:
            assert server is not app and server.broker_url == url
            assert server.registry is app.registry
            assert [e.name for e in server.periodic_entries] == ["every-minute"]
            assert server.producer.pre_publish is handler
        finally:
            server.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("parts_app_module", None)


def test_the_scheduler_sends_through_the_producer() -> None:
    server = _server()
    try:
        server.register_periodic_task("* * * * *", "minutely", Signature("tick"))
        tick = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
        scheduler = Scheduler(server, clock=lambda: tick)
        entry = server.registry.periodic_entries[0]
        sent = entry.send(server.producer, tick)
        assert sent.startswith("task ")
        assert [s.name for s in server.get_pending_tasks()] == ["tick"]
        assert scheduler.server is server
    finally:
        server.close()
