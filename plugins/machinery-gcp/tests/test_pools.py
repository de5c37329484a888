"""Worker pools, time limits, recycling and crash isolation on this transport
(machinery.testing.pools): real worker processes, children and signals against the real server."""

from __future__ import annotations

from machinery.testing.pools import PoolConformance


class TestGCPPubSubPools(PoolConformance): ...
