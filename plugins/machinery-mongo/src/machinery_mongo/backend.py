"""MongoDB result backend, with Go Machinery's collections and document shapes.

Task states go to the ``tasks`` collection and group metas to ``group_metas``, in the database
named by the ``mongodb.database`` option, else by the URL path (``mongodb://host/results``),
else ``machinery``. Documents carry Go's BSON names, so Go and Python read each other's::

    tasks:       {_id: <task UUID>, task_name, state, results: [{type, value}], error, created_at, ttl}
    group_metas: {_id: <group UUID>, task_uuids, chord_triggered, lock, created_at, ttl}

They are built from the core codec's JSON (``json.loads(encode_task_state(st))``) and read back
with ``task_state_from_mapping``, which accepts the BSON names. BSON integers are signed 64-bit:
larger values (``uint64`` above 2**63-1, which Go's driver refuses) are stored as Decimal128.

Expiry: with ``results_expire_in`` > 0, documents also carry ``expires_at`` (a date), and both
collections get a TTL index on it (``expireAfterSeconds: 0``), created once per process. MongoDB
deletes expired documents lazily (a sweep a minute), so reads skip those already past it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from bson.decimal128 import Decimal128
from pymongo import ReplaceOne

from machinery.plugin import (
    Backend,
    BackendError,
    Completion,
    GroupMeta,
    TaskState,
    encode_group_meta,
    encode_task_state,
    group_meta_from_mapping,
    parse_time,
    task_state_from_mapping,
)
from machinery_mongo.transport import DEFAULT_DATABASE, MongoOptions, MongoTransport

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from machinery.plugin import Config, Revocation

__all__ = ["DEFAULT_DATABASE", "MongoBackend", "MongoOptions", "from_document", "to_document"]

TASKS = "tasks"
GROUP_METAS = "group_metas"
#: The worker registry's collection (Python-only: Go's backend never opens it).
WORKERS = "machinery_py_workers"
#: Revocations (Python-only): an append-only log ``{_id: <sequence number>, uuid, terminate,
#: expires_at}`` and the counter ``{_id: "revocations", seq}`` that numbers it.
REVOCATIONS = "machinery_py_revocations"
COUNTERS = "machinery_py_counters"
#: Rate limiters (Python-only): ``{_id: <task name>, tat: <Unix time of the next free slot>}``.
RATE_LIMITS = "machinery_py_rate_limits"
#: Conditional writes tried before a reservation gives up (contention).
RATE_LIMIT_TRIES = 100
#: Seconds after which a hole in the revocation numbers is taken as final (a record that
#: expired, or a revoke that died between taking its number and writing its record).
REVOCATION_GAP_GRACE = 5.0
TTL_INDEX = "expires_at_ttl"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _bson_name(go_name: str) -> str:
    return _WORD_BOUNDARY.sub("_", go_name).lower()  # TaskName -> task_name, TaskUUIDs -> task_uuids


def to_document(uuid: str, go_json: bytes, expires_at: datetime | None) -> dict[str, Any]:
    """A MongoDB document, as Go writes it, from the core codec's JSON of a state or group meta.

    :param uuid: the task or group UUID (the document's ``_id``).
    :param go_json: ``encode_task_state(...)`` or ``encode_group_meta(...)``.
    :param expires_at: when the document expires (None: never).
    """
    fields = {_bson_name(k): v for k, v in json.loads(go_json).items()}
    fields.pop("task_uuid", None)
    fields.pop("group_uuid", None)
    if fields.get("results"):
        fields["results"] = [{_bson_name(k): _wide_ints(v) for k, v in r.items()} for r in fields["results"]]
    fields["created_at"] = parse_time(fields["created_at"])  # a BSON date, as Go's time.Time
    if not fields.get("ttl"):
        fields.pop("ttl", None)  # Go: `bson:"ttl,omitempty"`
    if expires_at is not None:
        fields["expires_at"] = expires_at
    return {"_id": uuid, **fields}


def _wide_ints(value: Any) -> Any:
    # BSON integers are 64-bit signed; uint64 values above that travel as Decimal128.
    if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
        return Decimal128(str(value))
    if isinstance(value, list):
        return [_wide_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _wide_ints(v) for k, v in value.items()}
    return value


def _narrow(value: Any) -> Any:
    if isinstance(value, Decimal128):
        return int(value.to_decimal())
    if isinstance(value, list):
        return [_narrow(v) for v in value]
    if isinstance(value, dict):
        return {k: _narrow(v) for k, v in value.items()}
    return value


def from_document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored task document, ready for ``task_state_from_mapping`` (big integers restored)."""
    out = dict(doc)
    if out.get("results"):
        out["results"] = [{**r, "value": _narrow(r.get("value"))} for r in out["results"]]
    return out


def _ttl_index(coll: Collection[dict[str, Any]]) -> None:
    coll.create_index("expires_at", name=TTL_INDEX, expireAfterSeconds=0)  # a no-op when it exists


def _revocation_indexes(coll: Collection[dict[str, Any]]) -> None:
    # no TTL index: a record deleted right after it expires would leave a hole just behind the
    # readers' cursors; expired records are deleted an hour later instead
    coll.create_index("expires_at", name="expires_at")
    coll.create_index("uuid", name="uuid")


#: The indexes a collection gets on its first use (once per connection).
_SETUP = {TASKS: _ttl_index, GROUP_METAS: _ttl_index, WORKERS: _ttl_index, REVOCATIONS: _revocation_indexes}


class MongoBackend(Backend):
    """Result backend on MongoDB (``mongodb://`` or ``mongodb+srv://``)."""

    config_section: ClassVar[str | None] = "mongodb"
    supports_worker_registry: ClassVar[bool] = True
    supports_revocation: ClassVar[bool] = True
    supports_rate_limit: ClassVar[bool] = True

    def __init__(self, url: str, config: Config, *, transport: MongoTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport: the options parsed once, the client shared by backends on this URL.
        self.transport: MongoTransport = MongoTransport.attach(self, url, config, transport)
        self.options: MongoOptions = self.transport.options
        #: The database holding the ``tasks`` and ``group_metas`` collections.
        self.database: str = self.transport.database
        self._errors = self.transport.errors
        #: (cursor, monotonic time) when a hole after that cursor was first seen.
        self._gap_seen: tuple[int, float] | None = None

    def _coll(self, name: str) -> Collection[dict[str, Any]]:
        """Collection ``name`` on the transport's client, made ready (its indexes) on first use."""
        return self.transport.collection(self, name, _SETUP.get(name))

    def _collections(self) -> tuple[Collection[dict[str, Any]], Collection[dict[str, Any]]]:
        """The ``tasks`` and ``group_metas`` collections (with their TTL index)."""
        return self._coll(TASKS), self._coll(GROUP_METAS)

    # -- revocations: an append-only log numbered by a counter (Go never reads either) -----------

    def revoke(self, task_uuids: Sequence[str], *, terminate: bool, ttl: timedelta | None) -> None:
        """Append one record per UUID, numbered by ``$inc`` on the counter (``terminate`` kept
        from a live earlier record of the UUID)."""
        from pymongo import ReturnDocument

        coll, counters = self._coll(REVOCATIONS), self._coll(COUNTERS)
        now = datetime.now(timezone.utc)
        expires = now + ttl if ttl is not None else None
        with self._errors(f"revoke {len(task_uuids)} task(s)"):
            coll.delete_many({"expires_at": {"$lte": now - timedelta(hours=1)}})
            for uuid in task_uuids:
                term = terminate or (
                    coll.find_one({"uuid": uuid, "terminate": True, **self._live()}, projection={"_id": True})
                    is not None
                )
                counter = counters.find_one_and_update(
                    {"_id": "revocations"}, {"$inc": {"seq": 1}}, upsert=True, return_document=ReturnDocument.AFTER
                )
                assert counter is not None  # upsert with ReturnDocument.AFTER always returns one
                seq = counter["seq"]
                coll.insert_one({"_id": int(seq), "uuid": uuid, "terminate": term, "expires_at": expires})

    def revocations_since(self, cursor: int, limit: int = 1000) -> tuple[list[Revocation], int]:
        """The records numbered after ``cursor``. The number is taken before the record is
        written, so the cursor only moves over consecutive numbers: a hole is waited for
        (records after it are returned again meanwhile) for :data:`REVOCATION_GAP_GRACE` s."""
        import time

        from machinery.plugin import Revocation

        coll, counters = self._coll(REVOCATIONS), self._coll(COUNTERS)
        with self._errors("read revocations"):
            head_doc = counters.find_one({"_id": "revocations"})
            head = int(head_doc["seq"]) if head_doc else 0
            if head < cursor:  # the counter was reset: start again
                cursor = 0
            docs = list(coll.find({"_id": {"$gt": cursor}}).sort("_id", 1).limit(limit))
        now = datetime.now(timezone.utc)
        out: list[Revocation] = []
        nxt = cursor
        contiguous = True
        for d in docs:
            seq = int(d["_id"])
            if contiguous and seq != nxt + 1:
                seen = self._gap_seen
                if seen is None or seen[0] != nxt:
                    self._gap_seen = seen = (nxt, time.monotonic())
                contiguous = time.monotonic() - seen[1] >= REVOCATION_GAP_GRACE
            if contiguous:
                nxt = seq
            exp = d.get("expires_at")
            if exp is not None and exp.tzinfo is None:
                exp = exp.replace(tzinfo=timezone.utc)
            if exp is None or exp > now:
                left = None if exp is None else (exp - now).total_seconds()
                out.append(Revocation(str(d["uuid"]), bool(d.get("terminate")), left))
        return out, nxt

    def rate_limit_reserve(self, key: str, interval: float, max_wait: float) -> tuple[bool, float]:
        """GCRA by compare-and-set: read the slot time, write the next one only if it is still the
        value read (``update_one`` filtered on it; ``insert_one`` on ``_id`` for the first), retry
        on a lost race. Times are the workers' clocks (keep them in sync: NTP)."""
        import time

        from pymongo.errors import DuplicateKeyError

        self._collections()
        coll = self._coll(RATE_LIMITS)
        with self._errors(f"rate limit {key}"):
            for _ in range(RATE_LIMIT_TRIES):
                now = time.time()
                doc = coll.find_one({"_id": key})
                old = float(doc["tat"]) if doc is not None else None
                tat = max(old, now) if old is not None else now
                wait = tat - now
                if wait > max_wait:
                    return False, wait
                if old is None:
                    try:
                        coll.insert_one({"_id": key, "tat": tat + interval})
                    except DuplicateKeyError:
                        continue
                    return True, wait
                if coll.update_one({"_id": key, "tat": old}, {"$set": {"tat": tat + interval}}).modified_count == 1:
                    return True, wait
        raise BackendError(f"rate limit {key}: {RATE_LIMIT_TRIES} conditional writes lost to other workers")

    def register_worker(self, worker_id: str, record: bytes, ttl: timedelta) -> None:
        """Upsert ``{_id: worker_id, record, expires_at}`` (the TTL index deletes it later)."""
        doc = {"_id": worker_id, "record": bytes(record), "expires_at": datetime.now(timezone.utc) + ttl}
        with self._errors(f"register worker {worker_id}"):
            self._coll(WORKERS).replace_one({"_id": worker_id}, doc, upsert=True)

    def unregister_worker(self, worker_id: str) -> None:
        """Delete the worker's document."""
        with self._errors(f"unregister worker {worker_id}"):
            self._coll(WORKERS).delete_one({"_id": worker_id})

    def list_workers(self) -> list[bytes]:
        """The records whose ``expires_at`` is in the future (the TTL sweep is lazy)."""
        with self._errors("list workers"):
            docs = list(self._coll(WORKERS).find({"expires_at": {"$gt": datetime.now(timezone.utc)}}))
        return [bytes(d["record"]) for d in docs]

    def _expires_at(self) -> datetime | None:
        secs = self.lifetime()
        return datetime.now(timezone.utc) + timedelta(seconds=secs) if secs is not None else None

    @staticmethod
    def _live() -> dict[str, Any]:
        # The TTL sweep is lazy: also skip documents whose expiry has passed but are not deleted yet.
        return {"expires_at": {"$not": {"$lte": datetime.now(timezone.utc)}}}

    def _store_state(self, state: TaskState) -> None:
        """Upsert the task's document (replacing the previous state)."""
        tasks, _ = self._collections()
        doc = to_document(state.task_uuid, encode_task_state(state), self._expires_at())
        with self._errors(f"task {state.task_uuid}"):
            tasks.replace_one({"_id": state.task_uuid}, doc, upsert=True)

    def _store_states(self, states: Sequence[TaskState], *, wait: bool = True) -> Completion:
        """Upsert several task documents in one unordered bulk write (``wait`` makes no
        difference)."""
        tasks, _ = self._collections()
        expires_at = self._expires_at()
        ops = [
            ReplaceOne({"_id": s.task_uuid}, to_document(s.task_uuid, encode_task_state(s), expires_at), upsert=True)
            for s in states
        ]
        if ops:
            with self._errors(f"{len(ops)} task states"):
                tasks.bulk_write(ops, ordered=False)
        return Completion.stored()

    def _load_state(self, task_uuid: str) -> TaskState | None:
        """Read a task's document; None when absent or expired."""
        tasks, _ = self._collections()
        with self._errors(f"task {task_uuid}"):
            doc = tasks.find_one({"_id": task_uuid, **self._live()})
        return None if doc is None else task_state_from_mapping(from_document(doc))

    def _load_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """Read several task documents with one ``$in`` query."""
        tasks, _ = self._collections()
        with self._errors(f"{len(task_uuids)} task states"):
            found = {d["_id"]: d for d in tasks.find({"_id": {"$in": list(task_uuids)}, **self._live()})}
        return [task_state_from_mapping(from_document(found[u])) if u in found else None for u in task_uuids]

    def _store_group(self, meta: GroupMeta) -> None:
        """Upsert the group's document."""
        _, groups = self._collections()
        doc = to_document(meta.group_uuid, encode_group_meta(meta), self._expires_at())
        with self._errors(f"group {meta.group_uuid}"):
            groups.replace_one({"_id": meta.group_uuid}, doc, upsert=True)

    def _load_group(self, group_uuid: str) -> GroupMeta | None:
        """Read the group's document; None when absent or expired."""
        _, groups = self._collections()
        with self._errors(f"group {group_uuid}"):
            doc = groups.find_one({"_id": group_uuid, **self._live()})
        return None if doc is None else group_meta_from_mapping(doc)

    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        """Flip ``chord_triggered`` from false to true in one atomic ``find_one_and_update``."""
        _, groups = self._collections()
        with self._errors(f"group {group_uuid}"):
            before = groups.find_one_and_update(
                {"_id": group_uuid, "chord_triggered": False, **self._live()},
                {"$set": {"chord_triggered": True}},
                projection={"_id": True},
            )
        return before is not None

    def _delete(self, uuid: str) -> None:
        """Delete the task or group document with this ``_id``."""
        tasks, groups = self._collections()
        with self._errors(f"deleting {uuid}"):
            tasks.delete_one({"_id": uuid})
            groups.delete_one({"_id": uuid})

    def close(self) -> None:
        """Release the transport (the client is closed with the last backend on it). Idempotent."""
        self.transport.release(self)
