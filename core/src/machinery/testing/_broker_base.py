"""The common part of :class:`~machinery.testing.BrokerConformance`: its tunables, fixtures and
helpers, which the test modules of the broker suite (:mod:`machinery.testing._broker_messages`,
:mod:`machinery.testing._broker_worker`) build on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from machinery.interfaces import Broker
from machinery.plugins import get_plugin_host
from machinery.signature import Signature, encode_signature, new_uuid
from machinery.testing._guard import SuiteBase
from machinery.testing._support import Consumer, wait_until

if TYPE_CHECKING:
    from machinery.config import Config
    from machinery.server import Server
    from machinery.testing.oracle import BrokerOracle

__all__ = ["BrokerSuite", "require_capability"]

_BOOL_CAPABILITIES = (
    "supports_native_delay",
    "supports_priority",
    "supports_pending_listing",
    "supports_delayed_listing",
    "redelivers_unacked",
    "supports_purge",
    "supports_dead_letters",
)


def require_capability(cls: type, capability: str, why: str) -> None:
    """Skip the running test, with a stated reason, when ``cls`` does not declare ``capability``."""
    __tracebackhide__ = True  # report the skip at the test, not here
    if not getattr(cls, capability, False):
        pytest.skip(f"{cls.__name__}.{capability} is False: {why}")


class BrokerSuite(SuiteBase):
    """The broker suite's tunables, fixtures and helpers (no tests)."""

    _machinery_suite = True

    #: Seconds after its ETA within which a task must be delivered (slack for polling brokers).
    eta_tolerance: ClassVar[float] = 1.5
    #: Seconds within which ``consume`` must return once ``stop`` is set.
    stop_timeout: ClassVar[float] = 2.5
    #: Seconds to wait for a message that should arrive now.
    delivery_timeout: ClassVar[float] = 10.0
    #: Seconds the oracle may take to show a count (stores with eventually consistent counts).
    oracle_timeout: ClassVar[float] = 3.0
    #: The redelivery timeout in effect with your ``transport_options`` (None: the broker
    #: class's ``redelivery_timeout``). Set it when your options shorten the visibility timeout.
    redelivery_timeout: ClassVar[float | None] = None

    # -- fixtures -------------------------------------------------------------------------------

    @pytest.fixture
    def broker_class(self, broker_url: str) -> type[Broker]:
        """The broker class the plugin host resolves for ``broker_url``."""
        return get_plugin_host().broker_class(broker_url)

    @pytest.fixture
    def broker(self, machinery_server: Server) -> Broker:
        """The producer server's broker."""
        return machinery_server.broker

    @pytest.fixture
    def new_broker(
        self, broker_class: type[Broker], broker_url: str, machinery_config: Config
    ) -> Iterator[Callable[[], Broker]]:
        """Make further broker instances (separate connections), closed at teardown."""
        made: list[Broker] = []

        def make() -> Broker:
            b = broker_class(broker_url, machinery_config)
            made.append(b)
            return b

        yield make
        for b in made:
            b.close()

    @pytest.fixture
    def consumers(self) -> Iterator[Callable[..., Consumer]]:
        """Start :class:`~machinery.testing._support.Consumer` threads, stopped at teardown."""
        running: list[Consumer] = []

        def start(broker: Broker, queue: str, **kwargs: Any) -> Consumer:
            c = Consumer(broker, queue, **kwargs)
            running.append(c)
            return c

        yield start
        for c in running:
            if not c.finished.is_set():
                c.stop()

    # -- helpers --------------------------------------------------------------------------------

    def effective_redelivery_timeout(self, broker_class: type[Broker]) -> float:
        """The redelivery timeout the tests wait for."""
        return float(self.redelivery_timeout or broker_class.redelivery_timeout)

    @staticmethod
    def publish(broker: Broker, sig: Signature) -> Signature:
        """Publish ``sig`` as the server does (UUID, routing key, Go encoding)."""
        if not sig.uuid:
            sig.uuid = new_uuid()
        broker.adjust_routing_key(sig)
        broker.publish(encode_signature(sig), sig)
        return sig

    def count(self, oracle: BrokerOracle, queue: str, expected: int) -> None:
        """Assert the oracle sees ``expected`` messages in ``queue`` within ``oracle_timeout``."""
        timeout = self.oracle_timeout
        last: list[int] = []

        def ok() -> bool:
            last.append(oracle.message_count(queue))
            return last[-1] == expected

        try:
            wait_until(ok, timeout, interval=0.05)
        except AssertionError:
            raise AssertionError(f"oracle: {last[-1]} message(s) in {queue!r}, expected {expected}") from None
