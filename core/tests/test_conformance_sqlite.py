"""The conformance suite against the embedded ``sqlite://`` transport (a fresh database file per
test), with real worker subprocesses. The oracles read the database file with the ``sqlite3``
module directly, bypassing the plugin."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from machinery.testing import (
    BackendConformance,
    BackendOracle,
    BrokerConformance,
    BrokerOracle,
    ControlConformance,
    LockConformance,
    WorkflowConformance,
)

#: A short lease, so the redelivery tests take seconds, not the default 30 s.
VISIBILITY_TIMEOUT = 3.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "conformance.db"


@pytest.fixture
def url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
def transport_options() -> Mapping[str, Mapping[str, Any]]:
    return {"sqlite": {"visibility_timeout": VISIBILITY_TIMEOUT}}


class _Raw:
    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()


class SQLiteBrokerOracle(_Raw, BrokerOracle):
    """Ready or leased (delivered, unacknowledged) rows; delayed rows only once due."""

    def message_count(self, queue: str) -> int:
        rows = self.query(
            "SELECT count(*) FROM machinery_messages WHERE queue = ? AND (state IN (0, 2) OR visible_at <= ?)",
            queue,
            time.time(),
        )
        return int(rows[0][0]) if rows else 0


class SQLiteBackendOracle(_Raw, BackendOracle):
    """The stored Go JSON of a state."""

    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        rows = self.query("SELECT data FROM machinery_states WHERE uuid = ?", task_uuid)
        if not rows:
            return None
        result: dict[str, Any] = json.loads(bytes(rows[0][0]))
        return result


class TestSQLiteBroker(BrokerConformance):
    redelivery_timeout = VISIBILITY_TIMEOUT

    @pytest.fixture
    def broker_oracle(self, db_path: Path) -> Iterator[BrokerOracle]:
        yield SQLiteBrokerOracle(db_path)


class TestSQLiteBackend(BackendConformance):
    @pytest.fixture
    def backend_oracle(self, db_path: Path) -> BackendOracle:
        return SQLiteBackendOracle(db_path)


class TestSQLiteLock(LockConformance):
    pass


class TestSQLiteWorkflow(WorkflowConformance):
    pass


class TestSQLiteControl(ControlConformance):
    pass
