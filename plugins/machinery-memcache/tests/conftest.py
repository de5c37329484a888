"""Fixtures: the shared memcached (``MEMCACHE_URL``) and private memcached processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from memcached_server import Memcached

from machinery.testing.oracle import require_server

pytest_plugins = ["machinery.testing.plugin"]

#: The shared server that ``scripts/start-services`` runs (never restarted by these tests).
DEFAULT_URL = "memcache://127.0.0.1:11211"


@pytest.fixture
def url() -> str:
    """The shared memcached under test: ``$MEMCACHE_URL`` or ``memcache://127.0.0.1:11211``."""
    url = os.environ.get("MEMCACHE_URL", DEFAULT_URL)
    require_server(url)
    return url


@pytest.fixture
def private_memcached() -> Iterator[Memcached]:
    """A memcached of this test's own, stopped at teardown."""
    server = Memcached()
    yield server
    server.stop()
