"""The fault suite (``machinery.testing.faults``) on the embedded ``sqlite://`` transport: a fresh
database file shared by the test and its ``machinery worker`` subprocesses.

Run by ``nox -s faults`` (the file name keeps it out of ``tests_core``). There is no server to
restart: the database is a file, so the restart scenario skips with that reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from test_conformance_sqlite import SQLiteBrokerOracle

from machinery.testing import BrokerOracle
from machinery.testing.faults import FaultConformance

#: The lease of a delivered message: a SIGKILLed worker's messages come back after it.
VISIBILITY_TIMEOUT = 3.0


@pytest.fixture
def url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
def transport_options() -> Mapping[str, Mapping[str, Any]]:
    return {"sqlite": {"visibility_timeout": VISIBILITY_TIMEOUT}}


class TestSQLiteFaults(FaultConformance):
    fault_label = "sqlite (embedded file, 3 s lease)"
    redelivery_timeout: ClassVar[float | None] = VISIBILITY_TIMEOUT

    @pytest.fixture
    def broker_oracle(self, db_path: Path) -> BrokerOracle:
        return SQLiteBrokerOracle(db_path)
