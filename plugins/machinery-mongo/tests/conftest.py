"""Fixtures: the shared MongoDB-wire server (``MONGODB_URL``), a test database, private servers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pymongo
import pytest
from secantus_server import Secantus

from machinery.testing.oracle import require_server

pytest_plugins = ["machinery.testing.plugin"]

#: The shared server that ``scripts/start-services`` runs (SecantusDB; never restarted by tests).
DEFAULT_URL = "mongodb://127.0.0.1:27017/"


@pytest.fixture(scope="session")
def mongodb_url() -> str:
    """``$MONGODB_URL`` or ``mongodb://127.0.0.1:27017/``."""
    return os.environ.get("MONGODB_URL", DEFAULT_URL)


@pytest.fixture(scope="session")
def test_database(mongodb_url: str) -> Iterator[str]:
    """A database of this test session, dropped at the end (nothing else is touched)."""
    name = f"machinery_test_{uuid.uuid4().hex[:8]}"
    yield name
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongodb_url, serverSelectionTimeoutMS=2000)
    try:
        client.drop_database(name)
    except pymongo.errors.PyMongoError:
        pass
    finally:
        client.close()


@pytest.fixture
def url(mongodb_url: str) -> str:
    """The server under test (the conformance suite's URL)."""
    require_server(mongodb_url)
    return mongodb_url


@pytest.fixture
def transport_options(test_database: str) -> Mapping[str, Mapping[str, Any]]:
    """Point the suite at this session's database."""
    return {"mongodb": {"database": test_database}}


@pytest.fixture
def db(url: str, test_database: str) -> Iterator[pymongo.database.Database[dict[str, Any]]]:
    """The raw pymongo database the backend writes to."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
    yield client[test_database]
    client.close()


@pytest.fixture
def private_secantus(tmp_path: Path) -> Iterator[Secantus]:
    """A SecantusDB of this test's own (data on disk), stopped at teardown."""
    data = tmp_path / "data"
    data.mkdir()
    server = Secantus(data)
    yield server
    server.stop()
