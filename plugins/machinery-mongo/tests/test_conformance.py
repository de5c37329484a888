"""The conformance suite on a MongoDB-wire server, with the suite's default (embedded) broker."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pymongo
import pytest

from machinery.testing import BackendConformance, BackendOracle, ControlConformance, WorkflowConformance
from machinery_mongo.backend import from_document


class MongoOracle(BackendOracle):
    """Reads task documents with a plain pymongo client."""

    def __init__(self, url: str, database: str) -> None:
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
        self.tasks = self.client[database]["tasks"]

    def raw_state(self, task_uuid: str) -> Mapping[str, Any] | None:
        """The task's document as stored (BSON names, which the suite's reader accepts)."""
        doc = self.tasks.find_one({"_id": task_uuid})
        return None if doc is None else from_document(doc)

    def close(self) -> None:
        """Close the client."""
        self.client.close()


class TestMongoBackend(BackendConformance):
    @pytest.fixture
    def backend_oracle(self, url: str, test_database: str) -> Iterator[MongoOracle]:
        oracle = MongoOracle(url, test_database)
        yield oracle
        oracle.close()


class TestMongoWorkflow(WorkflowConformance):
    """Worker subprocesses consuming the embedded broker, storing results in MongoDB."""


class TestMongoControl(ControlConformance):
    pass
