"""DynamoDB lock for periodic tasks: one item per key, taken and kept with conditional writes.

Table ``dynamodb.lock_table`` (default ``machinery_locks``), string hash key ``LockKey``,
attributes ``Owner`` and ``ExpiresAt`` (Unix time in milliseconds) plus ``TTL`` (seconds) so
DynamoDB eventually removes stale locks. Expiry is judged with the callers' clocks, so keep
the machines' clocks in sync (NTP) to well under the lock TTL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.plugin import Lock, LockError
from machinery_sqs import DYNAMODB_ENV
from machinery_sqs.backend import TTL_ATTR, DynamoDBTables
from machinery_sqs.transport import DynamoDBTransport, error_code

if TYPE_CHECKING:
    from machinery.plugin import Config

__all__ = ["DynamoDBLock"]

LOCK_KEY = "LockKey"
_NAMES = {"#k": LOCK_KEY, "#o": "Owner", "#e": "ExpiresAt", "#t": TTL_ATTR}


def _names(*refs: str) -> dict[str, str]:
    # DynamoDB rejects names an expression does not use
    return {r: _NAMES[r] for r in refs}


def _retried(exc: Exception) -> bool:
    """True when botocore sent the request more than once before this answer."""
    meta = getattr(exc, "response", {}).get("ResponseMetadata", {})
    return bool(meta.get("RetryAttempts"))


class DynamoDBLock(Lock):
    """A lock with expiry on a DynamoDB table; safe across processes and machines."""

    config_section: ClassVar[str | None] = "dynamodb"
    env_options: ClassVar[dict[str, str]] = DYNAMODB_ENV

    def __init__(self, url: str, config: Config, *, transport: DynamoDBTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport: the URL and options parsed once, the client and tables shared with a backend.
        self.transport: DynamoDBTransport = DynamoDBTransport.attach(self, url, config, transport)
        self._table = (self.transport.options.lock_table, LOCK_KEY)

    @property
    def tables(self) -> DynamoDBTables:
        """The transport's client and tables (opened on first use)."""
        tables: DynamoDBTables = self.transport.connection_for(self)
        return tables

    def close(self) -> None:
        """Release the transport (its client is closed with the last role). Idempotent."""
        self.transport.release(self)

    def _write(
        self, op: str, what: str, params: Callable[[], dict[str, Any]], *, retried_means_done: bool = False
    ) -> bool:
        # params() runs once the client (and, with create_tables, the table) is ready, so the
        # expiry it computes is not shortened by connection or table set-up.
        try:
            db = self.tables.db(self._table)
            getattr(db, op)(TableName=self._table[0], **params())
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return retried_means_done and _retried(exc)
            err = self.tables.error(exc, what, self._table[0])
            raise LockError(str(err)) from exc
        return True

    def _values(self, ttl: timedelta | None = None) -> dict[str, Any]:
        now = time.time()
        values: dict[str, Any] = {":o": {"S": self.owner}, ":now": {"N": str(int(now * 1000))}}
        if ttl is not None:
            values[":e"] = {"N": str(int((now + ttl.total_seconds()) * 1000))}
            values[":t"] = {"N": str(int(now + ttl.total_seconds()) + 1)}
        return values

    def acquire(self, key: str, ttl: timedelta) -> bool:
        """Conditional ``PutItem``: succeeds when the key is free, expired or already ours."""

        def params() -> dict[str, Any]:
            v = self._values(ttl)
            return {
                "Item": {LOCK_KEY: {"S": key}, "Owner": v[":o"], "ExpiresAt": v[":e"], TTL_ATTR: v[":t"]},
                "ConditionExpression": "attribute_not_exists(#k) OR #e <= :now OR #o = :o",
                "ExpressionAttributeNames": _names("#k", "#e", "#o"),
                "ExpressionAttributeValues": {":o": v[":o"], ":now": v[":now"]},
            }

        return self._write("put_item", f"acquire lock {key!r}", params)

    def release(self, key: str) -> bool:
        """Conditional ``DeleteItem``: only while this owner holds the key.

        The only write here that a retry can turn around: when the client sent the delete
        again (the first answer was lost: a dropped connection, a 5xx), the first one may have
        deleted the item, and the retry then fails its condition. That failure, after a retry,
        counts as released: the key is not held by this owner either way.
        """
        return self._write(
            "delete_item",
            f"release lock {key!r}",
            lambda: {
                "Key": {LOCK_KEY: {"S": key}},
                "ConditionExpression": "#o = :o AND #e > :now",
                "ExpressionAttributeNames": _names("#o", "#e"),
                "ExpressionAttributeValues": self._values(),
            },
            retried_means_done=True,
        )

    def extend(self, key: str, ttl: timedelta) -> bool:
        """Conditional ``UpdateItem`` of the expiry: only while this owner holds the key."""
        return self._write(
            "update_item",
            f"extend lock {key!r}",
            lambda: {
                "Key": {LOCK_KEY: {"S": key}},
                "UpdateExpression": "SET #e = :e, #t = :t",
                "ConditionExpression": "#o = :o AND #e > :now",
                "ExpressionAttributeNames": _names("#o", "#e", "#t"),
                "ExpressionAttributeValues": self._values(ttl),
            },
        )
