"""The embedded transport's errors: what a :class:`sqlite3.Error` means (:func:`describe_error`,
:func:`is_busy`) and the broker, backend and lock errors naming the file. Re-exported by
:mod:`machinery.builtin.sqlite._db`."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from machinery.errors import BackendConnectionError, BrokerConnectionError, LockError

if TYPE_CHECKING:
    pass

__all__ = [
    "PERMANENT_PROBLEMS",
    "SQLiteBackendError",
    "SQLiteBrokerError",
    "SQLiteLockError",
    "describe_error",
    "is_busy",
]

_SQLITE_BUSY = 5


def is_busy(exc: sqlite3.Error) -> bool:
    """True for ``SQLITE_BUSY`` (and its extended codes): another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if isinstance(code, int):
        return code & 0xFF == _SQLITE_BUSY
    return "database is locked" in str(exc).lower()


def describe_error(exc: sqlite3.Error, busy_timeout: float) -> tuple[str, str]:
    """A short problem name and an explanation for a SQLite error.

    Problems: ``locked``, ``corrupt``, ``read-only``, ``disk-full``, ``too-big``,
    ``cannot-open``, ``io``, ``schema`` and ``error``.
    """
    msg = str(exc)
    low = msg.lower()
    if "too big" in low:  # SQLITE_TOOBIG: a value beyond SQLite's length limit
        return "too-big", f"the record is larger than SQLite accepts ({msg})"
    if "locked" in low or "busy" in low:
        return "locked", (
            f"database is locked: another process held the write lock for longer than busy_timeout={busy_timeout:g}s"
        )
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return "corrupt", f"the file is corrupted or is not a SQLite database ({msg})"
    if "readonly" in low or "read-only" in low:
        return "read-only", f"the database is read-only ({msg}); check the file's and directory's permissions"
    if "disk is full" in low or "database or disk is full" in low:
        return "disk-full", (
            f"the disk is full ({msg}): free space on the file system holding the database; work "
            "resumes by itself as soon as a write fits (the write-ahead log, the -wal file, is then "
            "checkpointed into the database and truncated). If the disk has room, the database's "
            "size limit (PRAGMA max_page_count) is reached"
        )
    if "unable to open" in low:
        return "cannot-open", f"cannot open the file ({msg}); check that the directory exists and is writable"
    if "disk i/o" in low:
        return "io", f"disk I/O error ({msg})"
    if "newer machinery" in low:
        return "schema", msg
    return "error", msg


#: Problems that no retry fixes (the same write fails the same way).
PERMANENT_PROBLEMS = frozenset({"too-big"})


class _SQLiteErrorMixin:
    """What every sqlite error carries: the file, a short problem name and the operation; and
    ``retryable``, False for :data:`PERMANENT_PROBLEMS`."""

    role = "database"
    path: str
    problem: str
    operation: str
    retryable: bool

    def _init(self, path: str, problem: str, reason: str, operation: str) -> str:
        self.path = path
        self.problem = problem
        self.operation = operation
        self.retryable = problem not in PERMANENT_PROBLEMS
        return f"sqlite {self.role} {path}: {reason} (during {operation})"


class SQLiteBrokerError(_SQLiteErrorMixin, BrokerConnectionError):
    """The embedded broker's database failed (locked, corrupted, read-only, full...).

    :param path: the database file.
    :param problem: ``locked``, ``corrupt``, ``read-only``, ``disk-full``, ``too-big``,
        ``cannot-open``, ``io``, ``schema`` or ``error`` (``too-big`` is not ``retryable``).
    :param reason: the explanation.
    :param operation: what was being done (``publish``, ``claim``...).
    """

    role = "broker"

    def __init__(self, path: str, problem: str, reason: str, operation: str) -> None:
        super().__init__(self._init(path, problem, reason, operation))


class SQLiteBackendError(_SQLiteErrorMixin, BackendConnectionError):
    """The embedded result backend's database failed; same parameters as
    :class:`SQLiteBrokerError`."""

    role = "backend"

    def __init__(self, path: str, problem: str, reason: str, operation: str) -> None:
        super().__init__(self._init(path, problem, reason, operation))


class SQLiteLockError(_SQLiteErrorMixin, LockError):
    """The embedded lock's database failed; same parameters as :class:`SQLiteBrokerError`."""

    role = "lock"

    def __init__(self, path: str, problem: str, reason: str, operation: str) -> None:
        super().__init__(self._init(path, problem, reason, operation))
