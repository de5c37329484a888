"""Transports: one per URL and configuration, shared by the roles it hands out, closed with the
last of them; registered as plain data; the older role-by-role registration still served."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import pytest

from machinery import Config, Server, Signature, hookimpl
from machinery.builtin.memory import MemoryBackend, MemoryBroker, MemoryLock
from machinery.errors import MachineryError, PluginLoadError
from machinery.plugin import Transport, TransportRegistry
from machinery.plugins import PluginHost
from machinery.producer import Producer

OPENED: list[str] = []
CLOSED: list[str] = []


class CountingTransport(Transport):
    """A transport whose connection is a token; counts opens and closes."""

    role_classes: ClassVar[dict[str, Any]] = {
        "broker": f"{__name__}:TBroker",
        "backend": f"{__name__}:TBackend",
        "lock": f"{__name__}:TLock",
    }
    fused: ClassVar[list[str]] = []

    def open(self) -> Any:
        OPENED.append(self.url)
        return object()

    def close_connection(self, connection: Any) -> None:
        CLOSED.append(self.url)

    def supports_publish_with_state(self, broker: Any, backend: Any) -> bool:
        return True

    def publish_with_state(self, broker: Any, backend: Any, body: bytes, signature: Signature) -> None:
        self.fused.append(signature.uuid)
        backend.set_state_pending(signature)
        broker.publish(body, signature)


class _Role:
    transport: CountingTransport | None

    def _attach(self, url: str, config: Config, transport: CountingTransport | None) -> None:
        self.transport = CountingTransport.attach(self, url, config, transport)
        self.transport.connection  # noqa: B018 - opened on first use

    def close(self) -> None:
        assert self.transport is not None
        self.transport.release(self)


class TBroker(_Role, MemoryBroker):
    def __init__(self, url: str, config: Config, *, transport: CountingTransport | None = None) -> None:
        MemoryBroker.__init__(self, "memory://", config)
        self._attach(url, config, transport)

    def close(self) -> None:
        MemoryBroker.close(self)
        _Role.close(self)


class TBackend(_Role, MemoryBackend):
    def __init__(self, url: str, config: Config, *, transport: CountingTransport | None = None) -> None:
        MemoryBackend.__init__(self, "memory://", config)
        self._attach(url, config, transport)


class TLock(_Role, MemoryLock):
    def __init__(self, url: str, config: Config, *, transport: CountingTransport | None = None) -> None:
        MemoryLock.__init__(self, "memory://", config)
        self._attach(url, config, transport)


class _TransportPlugin:
    @hookimpl
    def machinery_register_transports(self, registry: TransportRegistry) -> None:
        registry.add(
            "counting",
            f"{__name__}:CountingTransport",
            roles={"broker", "backend", "lock"},
            section="counting",
            env={"COUNTING_SIZE": "size"},
            aliases=("counting+tls",),
        )


@pytest.fixture
def host() -> PluginHost:
    h = PluginHost(load_entry_points=False)
    h.pm.register(_TransportPlugin(), name="counting-plugin")
    OPENED.clear()
    CLOSED.clear()
    return h


def test_hook_machinery_register_transports(host: PluginHost) -> None:
    for kind in ("broker", "backend", "lock"):
        assert {"counting", "counting+tls"} <= set(host.schemes(kind))  # type: ignore[arg-type]
    assert host.transport_class("counting+tls://h", "lock") is CountingTransport
    assert host.broker_class("counting://h") is TBroker
    assert host.backend_class("counting://h") is TBackend
    assert host.lock_class("counting://h") is TLock
    assert "counting" in host.config_sections()
    assert host.env_options()["COUNTING_SIZE"] == ("counting", "size")


def test_broker_and_backend_on_one_url_share_one_transport(host: PluginHost) -> None:
    cfg = Config(broker="counting://h/0", transport_options={"counting": {"size": 1}})
    server = Server(cfg, plugins=host)
    assert isinstance(server.broker, TBroker) and isinstance(server.backend, TBackend)
    transport = server.broker.transport
    assert transport is not None and transport is server.backend.transport  # by construction
    assert server.lock.transport is transport
    assert transport.holders == 3 and OPENED == ["counting://h/0"]  # one connection for three roles
    # the same URL (scheme case aside) and an equal configuration: the same transport again
    again = Server(cfg.replace(transport_options={"counting": {"size": 1}}), plugins=host)
    assert again.broker.transport is transport and transport.holders == 5
    again.close()
    server.broker.close()
    server.backend.close()
    assert CLOSED == [] and transport.is_open  # the lock still holds it
    server.lock.close()
    server.lock.close()  # idempotent: a role releases once
    assert CLOSED == ["counting://h/0"] and not transport.is_open and transport.holders == 0
    # closed and forgotten: the next server on that URL gets a new transport
    fresh = Server(cfg, plugins=host)
    assert fresh.broker.transport is not transport
    fresh.close()


def test_direct_construction_finds_the_shared_transport(host: PluginHost) -> None:
    cfg = Config(broker="counting://h")
    broker = TBroker("counting://h", cfg)
    backend = host.backend_class("COUNTING://h")("COUNTING://h", cfg)  # as the conformance suite builds them
    assert broker.transport is backend.transport
    broker.close()
    backend.close()
    assert CLOSED == ["counting://h"]


def test_a_role_used_after_close_holds_the_transport_again(host: PluginHost) -> None:
    cfg = Config(broker="counting://h")
    backend = TBackend("counting://h", cfg)
    transport = backend.transport
    assert transport is not None
    backend.close()
    assert CLOSED == ["counting://h"] and transport.holders == 0
    transport.connection_for(backend)  # what a role reads when it is used again
    assert transport.holders == 1 and transport.is_open and len(OPENED) == 2
    assert CountingTransport.shared("counting://h", cfg) is transport  # back in the cache
    backend.close()
    assert CLOSED == ["counting://h", "counting://h"]


def test_different_urls_or_configs_are_not_shared(host: PluginHost) -> None:
    cfg = Config(broker="counting://a")
    a = Server(cfg, plugins=host)
    b = Server(cfg.replace(broker="counting://b"), plugins=host)
    c = Server(cfg.replace(default_queue="other"), plugins=host)
    d = Server(cfg.replace(transport_options={"counting": {"size": 2}}), plugins=host)
    transports = {id(s.broker.transport) for s in (a, b, c, d)}
    assert len(transports) == 4
    for s in (a, b, c, d):
        s.close()
    assert sorted(CLOSED) == sorted(OPENED) and len(OPENED) == 4


def test_producer_fuses_through_the_transport_capability(host: PluginHost) -> None:
    server = Server(Config(broker="counting://h"), plugins=host)
    CountingTransport.fused.clear()
    result = server.send_task(Signature("add", args=[]))
    assert CountingTransport.fused == [result.signature.uuid]
    assert server.get_state(result.signature.uuid) is not None
    # a broker and a backend of different transports: stored, then published, no fusing
    other = Server(Config(broker="counting://h", result_backend="counting://other"), plugins=host)
    other.send_task(Signature("add", args=[]))
    assert len(CountingTransport.fused) == 1
    server.close()
    other.close()


def test_concurrent_roles_open_one_connection(host: PluginHost) -> None:
    cfg = Config(broker="counting://h")
    made: list[Any] = []
    threads = [
        threading.Thread(target=lambda: made.append(host.make("backend", "counting://h", cfg))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b.transport) for b in made}) == 1 and OPENED == ["counting://h"]
    for b in made:
        b.close()
    assert CLOSED == ["counting://h"]


class AloneBroker(MemoryBroker):
    """A broker registered alone, holding no transport (the memory ones hold theirs)."""

    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self.transport = None


class AloneBackend(MemoryBackend):
    def __init__(self, url: str, config: Config) -> None:
        super().__init__(url, config)
        self.transport = None


class _OldStylePlugin:
    @hookimpl
    def machinery_register_brokers(self, register: Any) -> None:
        register("oldstyle", AloneBroker, section="", env={})

    @hookimpl
    def machinery_register_backends(self, register: Any) -> None:
        register("oldstyle", f"{__name__}:AloneBackend", section="")

    @hookimpl
    def machinery_fused_publisher(self, broker: Any, backend: Any) -> Any:
        if isinstance(broker, AloneBroker) and broker.url.startswith("oldstyle"):
            return lambda body, sig: (backend.set_state_pending(sig), broker.publish(body, sig), FUSED.append(sig.uuid))
        return None


FUSED: list[str] = []


def test_old_style_role_registration_still_works(host: PluginHost) -> None:
    host.pm.register(_OldStylePlugin(), name="oldstyle-plugin")
    assert host.transport_class("oldstyle://x") is None
    server = Server(Config(broker="oldstyle://x", result_backend="oldstyle://x"), plugins=host)
    assert type(server.broker) is AloneBroker and server.broker.transport is None
    FUSED.clear()
    sent = server.send_task(Signature("add", args=[]))
    assert [sent.signature.uuid] == FUSED  # the hook still fuses role classes registered alone
    server.close()


class _Clash:
    @hookimpl
    def machinery_register_brokers(self, register: Any) -> None:
        register("counting", MemoryBroker)


def test_a_role_class_cannot_claim_a_transport_scheme(host: PluginHost) -> None:
    host.pm.register(_Clash(), name="clash")
    with pytest.raises(MachineryError, match="claimed by both"):
        host.load()


def test_registry_rejects_unknown_roles_and_bad_targets(host: PluginHost) -> None:
    reg = TransportRegistry("d", lambda spec: None)
    with pytest.raises(ValueError, match="roles"):
        reg.add("x", "m:C", roles={"queue"})
    with pytest.raises(ValueError, match="roles"):
        reg.add("x", "m:C", roles=())

    class Bad:
        @hookimpl
        def machinery_register_transports(self, registry: TransportRegistry) -> None:
            registry.add("bad", "machinery.builtin.memory.broker:MemoryBroker", roles={"broker"})
            registry.add("missing", f"{__name__}:CountingTransport", roles={"broker"})

    host.pm.register(Bad(), name="bad")
    with pytest.raises(PluginLoadError, match="not a Transport"):
        host.broker_class("bad://")


def test_producer_without_a_transport_pair_stores_then_publishes() -> None:
    cfg = Config()
    producer = Producer(MemoryBroker("memory://", cfg), MemoryBackend("memory://", cfg), None)
    producer.send(Signature("add", args=[]))
    assert producer._fused is None
