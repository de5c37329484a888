"""The embedded lock: one row per key with its owner token and expiry, in a SQLite file.

Each operation is a single conditional statement, so it is atomic across threads and
processes: ``acquire`` is an upsert that only overwrites an expired row (or one this owner
already holds), ``release`` and ``extend`` touch the row only while this owner holds it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

from machinery.builtin.sqlite import ENV_OPTIONS
from machinery.builtin.sqlite._errors import SQLiteLockError
from machinery.builtin.sqlite.transport import SQLiteRole, SQLiteTransport
from machinery.interfaces import Lock

if TYPE_CHECKING:
    from datetime import timedelta

    from machinery.config import Config

__all__ = ["SQLiteLock", "SQLiteLockError"]


class SQLiteLock(SQLiteRole, Lock):
    """Lock with expiry and owner token on a SQLite file (same URLs as the broker).

    :param url: the ``sqlite://`` URL.
    :param config: the core configuration.
    :param transport: the transport handing it out (None: the shared one of ``url`` and ``config``).
    :raises ConfigError: a malformed URL or option.
    """

    config_section: ClassVar[str | None] = "sqlite"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS
    error_class = SQLiteLockError

    def __init__(self, url: str, config: Config, *, transport: SQLiteTransport | None = None) -> None:
        super().__init__(url, config)
        self._attach(url, config, transport)

    def acquire(self, key: str, ttl: timedelta) -> bool:
        """Take ``key`` for ``ttl`` unless another owner holds an unexpired claim."""
        now = time.time()
        with self._guard("acquire lock"), self._db.write(begin=False) as conn:
            cur = conn.execute(
                "INSERT INTO machinery_locks (key, owner, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
                "WHERE machinery_locks.expires_at <= ? OR machinery_locks.owner = excluded.owner",
                (key, self.owner, now + ttl.total_seconds(), now),
            )
            return cur.rowcount == 1

    def release(self, key: str) -> bool:
        """Delete ``key`` if this owner holds it (and it has not expired)."""
        with self._guard("release lock"), self._db.write(begin=False) as conn:
            cur = conn.execute(
                "DELETE FROM machinery_locks WHERE key = ? AND owner = ? AND expires_at > ?",
                (key, self.owner, time.time()),
            )
            return cur.rowcount == 1

    def extend(self, key: str, ttl: timedelta) -> bool:
        """Push ``key``'s expiry to ``ttl`` from now if this owner still holds it."""
        now = time.time()
        with self._guard("extend lock"), self._db.write(begin=False) as conn:
            cur = conn.execute(
                "UPDATE machinery_locks SET expires_at = ? WHERE key = ? AND owner = ? AND expires_at > ?",
                (now + ttl.total_seconds(), key, self.owner, now),
            )
            return cur.rowcount == 1

    def close(self) -> None:
        """Release the transport (its database handle is closed with the last role). Idempotent."""
        self._release_transport()
