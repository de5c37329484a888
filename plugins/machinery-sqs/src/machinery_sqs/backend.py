"""DynamoDB result backend: Go Machinery's ``https://dynamodb.<region>.amazonaws.com`` backend.

Two tables as Go uses them: task states (``dynamodb.task_states_table``, default
``task_states``, hash key ``TaskUUID``) and group metadata (``group_metas_table``, default
``group_metas``, hash key ``GroupUUID``). Items carry Go's attribute names, built from the
codec's own mapping; ``Results`` is a list of ``{Type, Value}`` maps whose ``Value`` is a string,
as Go writes it (strings as they are, other values as JSON text). ``TTL`` holds the Unix time
the record expires (``results_expire_in`` after the write), for DynamoDB's TTL feature; since
DynamoDB deletes expired items lazily (up to days later), reads ignore them themselves.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.plugin import (
    ZERO_TIME,
    Backend,
    BackendConnectionError,
    BackendError,
    Completion,
    ConfigError,
    DecodeError,
    GroupMeta,
    TaskState,
    format_time,
    group_meta_from_mapping,
    parse_options,
    parse_time,
    redact_url,
    task_state_from_mapping,
    wire,
)
from machinery_sqs import DYNAMODB_ENV
from machinery_sqs.transport import DynamoDBTransport, error_code, translate

if TYPE_CHECKING:
    from machinery.plugin import Config
    from machinery_sqs.transport import AwsTarget

__all__ = ["DynamoDBBackend", "DynamoDBOptions", "from_item", "to_item"]

log = logging.getLogger("machinery.dynamodb")

#: Serializes this process's chord triggers. DynamoDB makes each conditional write atomic, so
#: this is not what makes the trigger exactly-once across processes; it spares DynamoDB the
#: contention of a process's own threads, and keeps single-process use exactly-once on local
#: test servers that check conditions without isolation (moto_server handles requests in
#: parallel threads with no per-item locking).
_CHORD_LOCK = threading.Lock()
_BATCH_GET = 100
_BATCH_WRITE = 25
_ATTEMPTS = 6


TASK_KEY = wire.TASK_STATE.task_uuid
GROUP_KEY = wire.GROUP_META.group_uuid
#: Both tables name the expiry attribute alike (Go's ``TTL``).
TTL_ATTR = wire.TASK_STATE.ttl
_RESULTS = wire.TASK_STATE.results
_CREATED = wire.TASK_STATE.created_at
_CHORD = wire.GROUP_META.chord_triggered
_RESULT_TYPE = wire.TASK_RESULT.type
_RESULT_VALUE = wire.TASK_RESULT.value


@dataclass
class DynamoDBOptions:
    """The ``dynamodb:`` config section (Go's ``DynamoDBConfig``), also accepted as URL query options.

    :param task_states_table: table of task states (hash key ``TaskUUID``, string).
    :param group_metas_table: table of group metadata (hash key ``GroupUUID``, string).
    :param lock_table: table of the periodic-task lock (hash key ``LockKey``, string).
    :param create_tables: create missing tables (on-demand billing, TTL on ``TTL``) on first
        use. For development and tests; production tables belong to your infrastructure code.
    :param region: AWS region when the URL has none (else ``AWS_REGION``...).
    :param endpoint_url: endpoint override (else ``AWS_ENDPOINT_URL`` or AWS's endpoint).
    :param client: a ready boto3 DynamoDB client to use (Go's ``DynamoDBConfig.Client``).
    :param session: a ``boto3.session.Session`` to create the client from.
    """

    task_states_table: str = "task_states"
    group_metas_table: str = "group_metas"
    lock_table: str = "machinery_locks"
    create_tables: bool = False
    region: str = ""
    endpoint_url: str = ""
    client: Any = None
    session: Any = None

    def __post_init__(self) -> None:
        for name in ("task_states_table", "group_metas_table", "lock_table"):
            v = getattr(self, name)
            if not re.fullmatch(r"[A-Za-z0-9_.-]{3,255}", v):
                raise ConfigError(f"dynamodb.{name}", f"{v!r} is not a valid DynamoDB table name")

    @classmethod
    def load(cls, target: AwsTarget, config: Config) -> DynamoDBOptions:
        """Parse the config section, then the URL's query options (which win)."""
        return parse_options(cls, "dynamodb", config.section("dynamodb"), target.query)


class DynamoDBTables:
    """What a :class:`~machinery_sqs.transport.DynamoDBTransport` opens for its backend and
    lock: the client, the tables known to exist, and the error translation.

    :param options: the ``dynamodb:`` options.
    :param client: the boto3 DynamoDB client.
    """

    def __init__(self, options: DynamoDBOptions, client: Any) -> None:
        self.options = options
        #: The boto3 client.
        self.client = client
        self._ready: set[str] = set()
        self._lock = threading.Lock()

    def db(self, *tables: tuple[str, str]) -> Any:
        """The client; with ``create_tables``, first makes sure ``(table, hash key)`` pairs exist."""
        if self.options.create_tables:
            for table, key in tables:
                if table not in self._ready:
                    self._create(table, key)
        return self.client

    def _create(self, table: str, key: str) -> None:
        with self._lock:
            if table in self._ready:
                return
            db = self.client
            try:
                try:
                    status = db.describe_table(TableName=table)["Table"]["TableStatus"]
                except Exception as exc:
                    if error_code(exc) != "ResourceNotFoundException":
                        raise
                    try:
                        db.create_table(
                            TableName=table,
                            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                            BillingMode="PAY_PER_REQUEST",
                        )
                        log.info("created DynamoDB table %r (hash key %s)", table, key)
                    except Exception as exc2:
                        if error_code(exc2) != "ResourceInUseException":  # created by another process
                            raise
                    status = "CREATING"
                if status != "ACTIVE":
                    db.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
                try:
                    db.update_time_to_live(
                        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTR}
                    )
                except Exception as exc:
                    if error_code(exc) != "ValidationException":  # TTL already enabled
                        raise
            except Exception as exc:
                raise self.error(exc, f"create DynamoDB table {table!r}", table) from exc
            self._ready.add(table)

    def error(self, exc: BaseException, what: str, table: str = "") -> Exception:
        """A machinery error for a botocore exception; a missing table is named with a fix."""
        if isinstance(exc, (BackendError, ConfigError)):
            return exc
        if error_code(exc) == "ResourceNotFoundException" and table:
            key = GROUP_KEY if table == self.options.group_metas_table else TASK_KEY
            if table == self.options.lock_table:
                key = "LockKey"
            return BackendError(
                f"cannot {what}: DynamoDB table {table!r} does not exist "
                f"(at {redact_url(self.client.meta.endpoint_url)}); create it with the string hash key "
                f"{key!r} and TTL on {TTL_ATTR!r}, or set dynamodb.create_tables: true for development"
            )
        return translate(exc, what, BackendError, BackendConnectionError)


# -- items ------------------------------------------------------------------------------------


def _av(value: Any) -> dict[str, Any]:
    """A DynamoDB attribute value for a JSON value."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float)):
        return {"N": repr(value) if isinstance(value, float) else str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, list):
        return {"L": [_av(v) for v in value]}
    if isinstance(value, dict):
        return {"M": {k: _av(v) for k, v in value.items()}}
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB")


def _plain(av: Mapping[str, Any]) -> Any:
    """The JSON value of a DynamoDB attribute value."""
    (kind, v), *_ = av.items()
    if kind == "S":
        return v
    if kind == "N":
        return int(v) if re.fullmatch(r"-?\d+", v) else float(v)
    if kind == "BOOL":
        return bool(v)
    if kind == "NULL":
        return None
    if kind == "L":
        return [_plain(x) for x in v]
    if kind == "M":
        return {k: _plain(x) for k, x in v.items()}
    if kind in ("SS", "NS"):
        return [_plain({kind[0]: x}) for x in v]
    return v  # binary: leave as is


def _result_text(type_name: str, value: Any) -> str:
    return value if type_name == "string" and isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _result_value(type_name: str, value: Any) -> Any:
    if not isinstance(value, str) or type_name == "string":
        return value
    try:
        return json.loads(value)
    except ValueError:
        pass
    if value.startswith("[") and value.endswith("]"):  # Go's %v of a slice: "[1 2 3]"
        try:
            return [json.loads(x) for x in value[1:-1].split()]
        except ValueError:
            pass
    return value


_GO_TIME = re.compile(r"^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?) ([+-]\d\d)(\d\d)")


def _created_at(value: Any) -> Any:
    # Go's UpdateItem writes CreatedAt with time.String(): "2006-01-02 15:04:05.9 +0000 UTC m=+0.1".
    if not isinstance(value, str):
        return value
    try:
        parse_time(value)
        return value
    except ValueError:
        m = _GO_TIME.match(value)
        if m is None:
            return format_time(ZERO_TIME)
        return f"{m.group(1)}T{m.group(2)}{m.group(3)}:{m.group(4)}"


def to_item(doc: dict[str, Any], ttl: int, now: float) -> dict[str, Any]:
    """A DynamoDB item for a task state or group meta document (``wire.task_state_to_document``
    or ``wire.group_meta_to_document``).

    ``Results`` values become strings as Go writes them; ``TTL`` becomes the absolute expiry
    (``now + ttl``), or is left out when the record does not expire.
    """
    doc = dict(doc)
    doc.pop(TTL_ATTR, None)
    results = doc.get(_RESULTS)
    if isinstance(results, list):
        doc[_RESULTS] = [
            {_RESULT_TYPE: r[_RESULT_TYPE], _RESULT_VALUE: _result_text(r[_RESULT_TYPE], r[_RESULT_VALUE])}
            for r in results
        ]
    item = {k: _av(v) for k, v in doc.items()}
    if ttl > 0:
        item[TTL_ATTR] = {"N": str(round(now) + ttl)}
    return item


def from_item(item: Mapping[str, Any], now: float) -> dict[str, Any] | None:
    """The codec mapping of a stored item, or None when it has expired.

    ``TTL`` comes back as the record's lifetime in seconds (expiry minus creation time).
    """
    d = {k: _plain(v) for k, v in item.items()}
    expires = d.get(TTL_ATTR)
    if isinstance(expires, (int, float)) and expires > 0 and expires <= now:
        return None
    if _CREATED in d:
        d[_CREATED] = _created_at(d[_CREATED])
    if isinstance(expires, (int, float)) and expires > 0:
        try:
            created = parse_time(d[_CREATED]).timestamp() if isinstance(d.get(_CREATED), str) else now
        except ValueError:
            created = now
        d[TTL_ATTR] = max(0, round(expires - created)) if created > 0 else 0
    results = d.get(_RESULTS)
    if isinstance(results, list):
        d[_RESULTS] = [
            {**r, _RESULT_VALUE: _result_value(str(r.get(_RESULT_TYPE, "")), r.get(_RESULT_VALUE))}
            if isinstance(r, dict)
            else r
            for r in results
        ]
    return d


class DynamoDBBackend(Backend):
    """Result backend on two DynamoDB tables, Go Machinery's layout.

    URLs: ``https://dynamodb.<region>.amazonaws.com`` (Go's form), ``dynamodb://[region]``, with
    optional query options (``?task_states_table=...&create_tables=true``). A ready boto3 client
    goes in ``Config.transport_options["dynamodb"]["client"]``.
    """

    supports_expiry: ClassVar[bool] = True
    persistent: ClassVar[bool] = True
    #: ``TTL`` holds the record's lifetime, written as the absolute expiry (Go's DynamoDB
    #: backend sets ``TTL`` = now + ``results_expire_in``, 0 meaning 3600: ``getExpirationTime``).
    stores_ttl: ClassVar[bool] = True
    config_section: ClassVar[str | None] = "dynamodb"
    env_options: ClassVar[dict[str, str]] = DYNAMODB_ENV

    def __init__(self, url: str, config: Config, *, transport: DynamoDBTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport: the URL and options parsed once, the client and tables shared with a lock.
        self.transport: DynamoDBTransport = DynamoDBTransport.attach(self, url, config, transport)
        self.options = self.transport.options
        self._states = (self.options.task_states_table, TASK_KEY)
        self._groups = (self.options.group_metas_table, GROUP_KEY)

    @property
    def tables(self) -> DynamoDBTables:
        """The transport's client and tables (opened on first use)."""
        tables: DynamoDBTables = self.transport.connection_for(self)
        return tables

    def close(self) -> None:
        """Release the transport (its client is closed with the last role). Idempotent."""
        self.transport.release(self)

    def _key(self, table: tuple[str, str], uuid: str) -> dict[str, Any]:
        return {table[1]: {"S": uuid}}

    def _put(self, table: tuple[str, str], item: dict[str, Any], what: str) -> None:
        try:
            self.tables.db(table).put_item(TableName=table[0], Item=item)
        except Exception as exc:
            raise self.tables.error(exc, what, table[0]) from exc

    def _get(self, table: tuple[str, str], uuid: str, what: str) -> dict[str, Any] | None:
        try:
            out = self.tables.db(table).get_item(TableName=table[0], Key=self._key(table, uuid), ConsistentRead=True)
        except Exception as exc:
            raise self.tables.error(exc, what, table[0]) from exc
        item = out.get("Item")
        return from_item(item, time.time()) if item else None

    def _store_state(self, state: TaskState) -> None:
        """``PutItem`` the state (replacing the previous one) with its TTL."""
        item = to_item(wire.task_state_to_document(state), state.ttl, time.time())
        self._put(self._states, item, f"store the state of task {state.task_uuid}")

    def _load_state(self, task_uuid: str) -> TaskState | None:
        """Consistent ``GetItem``; None when absent or expired."""
        d = self._get(self._states, task_uuid, f"read the state of task {task_uuid}")
        return None if d is None else _state(d)

    def _store_group(self, meta: GroupMeta) -> None:
        """``PutItem`` the group's metadata with its TTL."""
        item = to_item(wire.group_meta_to_document(meta), meta.ttl, time.time())
        self._put(self._groups, item, f"store group {meta.group_uuid}")

    def _load_group(self, group_uuid: str) -> GroupMeta | None:
        """Consistent ``GetItem``; None when absent or expired."""
        d = self._get(self._groups, group_uuid, f"read group {group_uuid}")
        if d is None:
            return None
        try:
            return group_meta_from_mapping(d)
        except DecodeError as exc:
            raise BackendError(f"group {group_uuid}: stored metadata is malformed: {exc.reason}") from exc

    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        """Conditional ``UpdateItem``: set ``ChordTriggered`` only if the group exists, has not
        expired and the flag is still false, so exactly one caller wins."""
        table = self._groups
        try:
            db = self.tables.db(table)
            with _CHORD_LOCK:
                db.update_item(
                    TableName=table[0],
                    Key=self._key(table, group_uuid),
                    UpdateExpression="SET #c = :t",
                    ConditionExpression=(
                        "attribute_exists(#k) AND (attribute_not_exists(#c) OR #c = :f) "
                        "AND (attribute_not_exists(#ttl) OR #ttl > :now)"
                    ),
                    ExpressionAttributeNames={"#c": _CHORD, "#k": GROUP_KEY, "#ttl": TTL_ATTR},
                    ExpressionAttributeValues={
                        ":t": {"BOOL": True},
                        ":f": {"BOOL": False},
                        ":now": {"N": str(int(time.time()))},
                    },
                )
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise self.tables.error(exc, f"trigger the chord of group {group_uuid}", table[0]) from exc
        return True

    def _delete(self, uuid: str) -> None:
        """Delete the item from both tables (a UUID names a task or a group)."""
        for table in (self._states, self._groups):
            try:
                self.tables.db(table).delete_item(TableName=table[0], Key=self._key(table, uuid))
            except Exception as exc:
                raise self.tables.error(exc, f"delete {uuid}", table[0]) from exc

    def _load_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """``BatchGetItem`` in chunks of 100 (consistent reads), retrying unprocessed keys."""
        table, key = self._states
        found: dict[str, TaskState] = {}
        unique = list(dict.fromkeys(task_uuids))
        now = time.time()
        for i in range(0, len(unique), _BATCH_GET):
            request: dict[str, Any] = {
                table: {"Keys": [{key: {"S": u}} for u in unique[i : i + _BATCH_GET]], "ConsistentRead": True}
            }
            for attempt in range(_ATTEMPTS):
                try:
                    out = self.tables.db(self._states).batch_get_item(RequestItems=request)
                except Exception as exc:
                    raise self.tables.error(exc, "read task states", table) from exc
                for item in out.get("Responses", {}).get(table, ()):
                    d = from_item(item, now)
                    if d is not None:
                        st = _state(d)
                        found[st.task_uuid] = st
                request = out.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(0.05 * 2**attempt)
            else:
                raise BackendError(f"DynamoDB left {len(request[table]['Keys'])} task states unread after retries")
        return [found.get(u) for u in task_uuids]

    def _store_states(self, states: Sequence[TaskState], *, wait: bool = True) -> Completion:
        """``BatchWriteItem`` in chunks of 25, retrying unprocessed items (``wait`` makes no
        difference)."""
        table = self._states[0]
        now = time.time()
        latest = {st.task_uuid: st for st in states}  # a batch may not name a key twice
        items = [to_item(wire.task_state_to_document(st), st.ttl, now) for st in latest.values()]
        for i in range(0, len(items), _BATCH_WRITE):
            request: dict[str, Any] = {table: [{"PutRequest": {"Item": it}} for it in items[i : i + _BATCH_WRITE]]}
            for attempt in range(_ATTEMPTS):
                try:
                    out = self.tables.db(self._states).batch_write_item(RequestItems=request)
                except Exception as exc:
                    raise self.tables.error(exc, "store task states", table) from exc
                request = out.get("UnprocessedItems") or {}
                if not request:
                    break
                time.sleep(0.05 * 2**attempt)
            else:
                raise BackendError(f"DynamoDB left {len(request[table])} task states unwritten after retries")
        return Completion.stored()


def _state(d: dict[str, Any]) -> TaskState:
    try:
        return task_state_from_mapping(d)
    except DecodeError as exc:
        raise BackendError(f"stored task state is malformed: {exc.reason}") from exc
