"""The conformance suite's pytest plugin. Enable it explicitly in your ``conftest.py``::

    pytest_plugins = ["machinery.testing.plugin"]

It is never loaded through ``pytest11``, so installing ``machinery-core[testing]`` changes no
one else's test runs.

Command line and environment:
    ``--machinery-url URL`` (or ``MACHINERY_TEST_URL``): the URL under test, for the default
    ``url`` fixture. Plugins usually define their own ``url`` fixture reading their own
    variable (``REDIS_URL``...) with a default, and call :func:`~machinery.testing.require_server`.

Fixtures (override any of them in your conftest or test class):
    ``url``: the URL under test.
    ``broker_url`` / ``backend_url`` / ``lock_url``: ``url`` when its scheme serves that role,
    else a temporary ``sqlite://`` file of the embedded transport (so a backend-only plugin is
    tested with a real cross-process broker, and a broker-only plugin with a real backend).
    ``transport_options``: config sections handed to the plugins (default ``{}``).
    ``machinery_queue``: a unique queue name per test, ``mt_<hex>``.
    ``machinery_key_prefix``: a unique prefix for lock keys and other names, per test.
    ``machinery_config``: the :class:`~machinery.Config` built from all of the above.
    ``machinery_server``: a producer :class:`~machinery.Server` on that config.
    ``machinery_worker``: a factory starting workers (subprocess or thread), stopped at teardown.
    ``broker_oracle`` / ``backend_oracle``: **you provide these** (raw-client
    :class:`~machinery.testing.BrokerOracle` / :class:`~machinery.testing.BackendOracle`).

Isolation: every test gets its own queue and key prefix; at teardown the test's queues are
purged (when the broker supports it). Nothing ever flushes a whole server.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest

from machinery.config import Config, redact_url
from machinery.plugins import get_plugin_host, scheme_of
from machinery.server import Server
from machinery.testing._support import SubprocessWorker, ThreadWorker, WorkerHandle
from machinery.testing.oracle import BackendOracle, BrokerOracle

__all__ = [
    "backend_oracle",
    "backend_url",
    "broker_oracle",
    "broker_url",
    "lock_url",
    "machinery_config",
    "machinery_key_prefix",
    "machinery_queue",
    "machinery_server",
    "machinery_url_option",
    "machinery_worker",
    "transport_options",
    "url",
]

log = logging.getLogger("machinery.testing")

#: Seconds results are kept by default in suite tests (so nothing lingers for long on real servers).
RESULTS_EXPIRE_IN = 600


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--machinery-url``."""
    group = parser.getgroup("machinery", "machinery conformance suite")
    group.addoption(
        "--machinery-url",
        dest="machinery_url",
        default=None,
        metavar="URL",
        help="URL of the transport under test (default: $MACHINERY_TEST_URL, or the plugin's own url fixture)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Declare the suite's markers."""
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "machinery_subprocess: starts worker subprocesses")


def _embedded_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'machinery-test.db'}"


def _serves(kind: Literal["broker", "backend", "lock"], url: str) -> bool:
    """True when ``url`` should be used for ``kind``: its scheme serves that role, or serves no
    role at all (so an uninstalled or unregistered plugin fails loudly instead of being
    replaced by the embedded transport)."""
    try:
        scheme = scheme_of(url)
    except Exception:  # noqa: BLE001 - a bad URL is reported when it is used
        return True
    host = get_plugin_host()
    if scheme in host.schemes(kind):
        return True
    return not any(scheme in host.schemes(k) for k in ("broker", "backend", "lock"))


@pytest.fixture
def machinery_url_option(pytestconfig: pytest.Config) -> str | None:
    """``--machinery-url``, else ``$MACHINERY_TEST_URL``, else None."""
    value = pytestconfig.getoption("machinery_url", default=None)
    return str(value) if value else (os.environ.get("MACHINERY_TEST_URL") or None)


@pytest.fixture
def url(machinery_url_option: str | None) -> str:
    """The URL under test: ``--machinery-url`` or ``MACHINERY_TEST_URL``.

    Plugins normally override this fixture with their own default and
    :func:`~machinery.testing.require_server`.
    """
    if not machinery_url_option:
        pytest.fail(
            "no URL under test: define a `url` fixture in your conftest.py or test module, "
            "or pass --machinery-url / set MACHINERY_TEST_URL",
            pytrace=False,
        )
    return machinery_url_option


@pytest.fixture
def broker_url(url: str, tmp_path: Path) -> str:
    """The broker URL: ``url`` when its scheme has a broker, else a temporary embedded one."""
    return url if _serves("broker", url) else _embedded_url(tmp_path)


@pytest.fixture
def backend_url(url: str, tmp_path: Path) -> str:
    """The result backend URL: ``url`` when its scheme has a backend, else a temporary embedded one."""
    return url if _serves("backend", url) else _embedded_url(tmp_path)


@pytest.fixture
def lock_url(url: str, tmp_path: Path) -> str:
    """The lock URL: ``url`` when its scheme has a lock, else a temporary embedded one."""
    return url if _serves("lock", url) else _embedded_url(tmp_path)


@pytest.fixture
def transport_options() -> Mapping[str, Mapping[str, Any]]:
    """Config sections for the transports under test, e.g. ``{"redis": {"max_idle": 3}}``."""
    return {}


@pytest.fixture
def machinery_queue() -> str:
    """A queue name no other test uses: ``mt_<12 hex digits>``."""
    return f"mt_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def machinery_key_prefix(machinery_queue: str) -> str:
    """A prefix for lock keys and other names, unique to this test."""
    return f"{machinery_queue}_"


@pytest.fixture
def machinery_config(
    broker_url: str,
    backend_url: str,
    lock_url: str,
    machinery_queue: str,
    transport_options: Mapping[str, Mapping[str, Any]],
) -> Config:
    """The configuration every suite test uses (its own queue, the URLs and options under test)."""
    return Config(
        broker=broker_url,
        result_backend=backend_url,
        lock=lock_url,
        default_queue=machinery_queue,
        results_expire_in=RESULTS_EXPIRE_IN,
        no_unix_signals=True,
        transport_options={k: dict(v) for k, v in transport_options.items()},
    )


@pytest.fixture
def machinery_server(machinery_config: Config, machinery_queue: str) -> Iterator[Server]:
    """A producer :class:`Server`; its transports are resolved through the plugin host."""
    server = Server(machinery_config)
    yield server
    purge_queues(server, [machinery_queue, f"{machinery_queue}_custom"])
    server.close()


def purge_queues(server: Server, queues: list[str]) -> None:
    """Best-effort removal of a test's leftover messages (only where the broker can purge)."""
    broker = server.broker
    if not type(broker).supports_purge:
        return
    for q in queues:
        try:
            broker.purge(q)
        except Exception as exc:  # noqa: BLE001 - cleanup must not mask the test's outcome
            log.warning("could not purge test queue %s on %s: %s", q, redact_url(server.broker_url), exc)


@pytest.fixture
def machinery_worker(machinery_config: Config, tmp_path: Path) -> Iterator[Callable[..., WorkerHandle]]:
    """Start workers: ``machinery_worker(concurrency=2, in_process=False, tasks=None)``.

    Subprocess workers run ``python -m machinery.testing.app`` with the test's configuration;
    ``in_process=True`` runs a worker thread here instead (``tasks`` adds extra tasks; only for
    thread workers). Every worker is stopped at teardown, and subprocess logs are printed, so a
    failing test shows what its workers did.
    """
    started: list[WorkerHandle] = []

    def start(
        concurrency: int = 2,
        in_process: bool = False,
        tasks: Mapping[str, Callable[..., Any]] | None = None,
        config: Config | None = None,
    ) -> WorkerHandle:
        cfg = config or machinery_config
        handle: WorkerHandle
        if in_process:
            handle = ThreadWorker(cfg, concurrency=concurrency, tasks=tasks)
        else:
            if tasks:
                raise ValueError("extra tasks need in_process=True (the subprocess registers the standard tasks)")
            sub = SubprocessWorker(cfg, tmp_path / f"worker-{len(started)}.log", concurrency=concurrency)
            started.append(sub)
            sub.wait_ready()
            return sub
        started.append(handle)
        return handle

    yield start
    for handle in started:
        try:
            handle.stop()
        finally:
            out = handle.output()
            if out:
                print(f"----- {handle.name} -----\n{out[-6000:]}")


@pytest.fixture
def broker_oracle() -> BrokerOracle:
    """The raw-client broker oracle. **Override this fixture** (see :class:`BrokerOracle`)."""
    pytest.fail(
        "this conformance test needs a `broker_oracle` fixture returning a machinery.testing.BrokerOracle "
        "implemented with your raw client; see docs/writing-a-plugin.md",
        pytrace=False,
    )


@pytest.fixture
def backend_oracle() -> BackendOracle:
    """The raw-client backend oracle. **Override this fixture** (see :class:`BackendOracle`)."""
    pytest.fail(
        "this conformance test needs a `backend_oracle` fixture returning a machinery.testing.BackendOracle "
        "implemented with your raw client; see docs/writing-a-plugin.md",
        pytrace=False,
    )
