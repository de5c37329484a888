"""Worker pools, time limits, recycling and crash isolation on the embedded ``sqlite://``
transport: real worker processes, children and signals (machinery.testing.pools)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from machinery.testing.pools import PoolConformance

#: A short lease, so a message held by a killed worker comes back in seconds.
VISIBILITY_TIMEOUT = 5.0


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pools.db'}"


@pytest.fixture
def transport_options() -> Mapping[str, Mapping[str, Any]]:
    return {"sqlite": {"visibility_timeout": VISIBILITY_TIMEOUT}}


class TestSQLitePools(PoolConformance):
    @pytest.fixture
    def pool_env(self) -> dict[str, str]:
        return {"SQLITE_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)}
