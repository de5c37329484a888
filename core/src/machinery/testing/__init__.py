"""``machinery.testing``: the conformance suite every broker, backend and lock plugin must pass.

Install ``machinery-core[testing]``, enable the pytest plugin in your ``conftest.py``::

    pytest_plugins = ["machinery.testing.plugin"]

and subclass the suites in your tests (see ``docs/writing-a-plugin.md``)::

    @pytest.fixture
    def url() -> str:
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        require_server(url)
        return url

    class TestRedisBroker(BrokerConformance):
        @pytest.fixture
        def broker_oracle(self, url): return RedisOracle(url)

    class TestRedisBackend(BackendConformance): ...
    class TestRedisLock(LockConformance): ...
    class TestRedisWorkflow(WorkflowConformance): ...
    class TestRedisControl(ControlConformance): ...    # revoke and rate limits
    class TestRedisPools(PoolConformance): ...     # worker pools and time limits (docs/pools.md)

The transport classes are resolved from the URL through the plugin host, so the plugin must be
installed and registered. Capabilities the transport lacks (its classes' ``supports_*``
attributes) become skips with the reason; a subclass may not delete or override a suite test
except with ``@pytest.mark.xfail(reason=...)`` (``test_no_overrides`` fails otherwise).

This package imports pytest; ``import machinery`` never imports it.
"""

from __future__ import annotations

from machinery.testing._support import check_periodic_ticks_once
from machinery.testing.backend import BackendConformance
from machinery.testing.broker import BrokerConformance, require_capability
from machinery.testing.control import ControlConformance
from machinery.testing.lock import LockConformance
from machinery.testing.oracle import (
    BackendOracle,
    BrokerOracle,
    MemoryBackendOracle,
    MemoryBrokerOracle,
    require_server,
)
from machinery.testing.pools import PoolConformance
from machinery.testing.workflow import WorkflowConformance

__all__ = [
    "BackendConformance",
    "BackendOracle",
    "BrokerConformance",
    "BrokerOracle",
    "ControlConformance",
    "LockConformance",
    "MemoryBackendOracle",
    "MemoryBrokerOracle",
    "PoolConformance",
    "WorkflowConformance",
    "check_periodic_ticks_once",
    "require_capability",
    "require_server",
]
