"""Core tests: the conformance suite's pytest plugin (for the memory and sqlite suites), pytester
(for the suite's own guard tests), and the database file and raw SQL access shared by the sqlite
transport tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

pytest_plugins = ["machinery.testing.plugin", "pytester"]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """The database file of a test of the embedded transports (``sqlite:///{db_path}``)."""
    return tmp_path / "machinery.db"


@pytest.fixture
def raw(db_path: Path) -> Callable[..., list[tuple[object, ...]]]:
    """``raw(sql, *params)``: the rows of one statement run on ``db_path`` through a connection of
    its own, to see what the transport under test wrote."""

    def query(sql: str, *params: object) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(db_path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    return query
