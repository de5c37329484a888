"""Handles on sent tasks: :class:`AsyncResult`, :class:`GroupResult`, :class:`ChainAsyncResult`
and :class:`ChordAsyncResult`.

``get`` blocks until the task is done and returns its Python value: the single result, a tuple
for several results (Go's multiple return values) or None for none. ``results`` returns Go's
typed list instead. A FAILURE raises :class:`~machinery.errors.TaskFailedError` with the stored
error; running out of time raises :class:`~machinery.errors.ResultTimeoutError`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from machinery.errors import ResultTimeoutError, StateNotFoundError, TaskFailedError
from machinery.state import State, TaskResult, TaskState

if TYPE_CHECKING:
    from machinery.interfaces import Backend
    from machinery.progress import Progress
    from machinery.signature import Signature

__all__ = ["AsyncResult", "ChainAsyncResult", "ChordAsyncResult", "GroupResult"]

_FOREVER = 10.0 * 365 * 24 * 3600


def _value(results: Sequence[TaskResult] | None) -> Any:
    if not results:
        return None
    if len(results) == 1:
        return results[0].value
    return tuple(r.value for r in results)


def _revoke(backend: Backend, uuids: list[str], terminate: bool, expires_in: float | None) -> None:
    from machinery.revoke import revoke

    revoke(backend, uuids, terminate=terminate, expires_in=expires_in)


class AsyncResult:
    """The result of one sent task.

    :param signature: the sent signature (or just its UUID).
    :param backend: the result backend to read from.
    :param sent_later: the task is sent later by a worker (a chain's later step, a chord's
        callback): while it has no state yet, waiting goes on (until ``timeout``) instead of
        raising :class:`~machinery.errors.StateNotFoundError` after 2 s.
    """

    __slots__ = ("_backend", "_state", "sent_later", "signature", "task_uuid")

    def __init__(self, signature: Signature | str, backend: Backend, *, sent_later: bool = False) -> None:
        self.sent_later = sent_later
        if isinstance(signature, str):
            self.task_uuid = signature
            self.signature: Signature | None = None
        else:
            self.task_uuid = signature.uuid
            self.signature = signature
        self._backend = backend
        self._state: TaskState | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.task_uuid} {self._state.state if self._state else '?'}>"

    # -- state ------------------------------------------------------------------------------

    def get_state(self) -> TaskState:
        """The current stored state (PENDING when nothing is stored yet)."""
        if self._state is not None and self._state.is_completed:
            return self._state
        st = self._backend.get_state(self.task_uuid)
        if st is None:
            return TaskState(task_uuid=self.task_uuid, state=State.PENDING.value)
        self._state = st
        return st

    @property
    def status(self) -> str:
        """The current state name (``PENDING``, ``STARTED``, ``SUCCESS``...)."""
        return self.get_state().state

    def ready(self) -> bool:
        """True once the task is SUCCESS or FAILURE."""
        return self.get_state().is_completed

    def successful(self) -> bool:
        """True when the task succeeded."""
        return self.get_state().is_success

    def failed(self) -> bool:
        """True when the task failed for good."""
        return self.get_state().is_failure

    @property
    def progress(self) -> Progress | None:
        """What the running task last reported with ``ctx.report_progress`` (``done``,
        ``total``, ``info``, ``updated_at``), read from the backend now; None before the first
        report, for tasks that never report, and once the task is done (the final state
        replaces the record)."""
        return self.get_state().progress

    def revoke(self, terminate: bool = False, expires_in: float | None = None) -> None:
        """Revoke this task (:meth:`Server.revoke <machinery.server.Server.revoke>`).

        :raises NotImplementedError: the result backend cannot store revocations.
        """
        _revoke(self._backend, [self.task_uuid], terminate, expires_in)

    def touch(self) -> list[TaskResult] | None:
        """Go's ``Touch``: the results when done, None while running.

        :raises TaskFailedError: when the task failed.
        """
        st = self.get_state()
        if st.is_failure:
            raise TaskFailedError(self.task_uuid, st.error)
        if st.is_success:
            return list(st.results or [])
        return None

    # -- waiting ----------------------------------------------------------------------------

    def _wait(self, timeout: float | None, poll_interval: float) -> TaskState:
        if self._state is not None and self._state.is_completed:
            return self._state
        limit = _FOREVER if timeout is None else max(0.0, timeout)
        start = time.monotonic()
        while True:
            remaining = limit - (time.monotonic() - start)
            st = self._backend.wait_for(self.task_uuid, max(0.0, min(remaining, 1.0)), poll_interval)
            if st is not None:
                self._state = st
                if st.is_completed:
                    return st
            elif not self.sent_later and time.monotonic() - start > min(limit, 2.0):
                # PENDING is stored before publishing, so nothing at all means it is gone.
                raise StateNotFoundError(
                    self.task_uuid, "no state stored (expired, purged, or lost by a cache restart)"
                )
            if time.monotonic() - start >= limit:
                raise ResultTimeoutError(self.task_uuid, limit, st.state if st else None)

    def results(self, timeout: float | None = None, poll_interval: float = 0.05) -> list[TaskResult]:
        """Block until done; the typed results (Go's ``Get``).

        :param timeout: seconds to wait (None: forever).
        :param poll_interval: longest pause between polls of backends that cannot block.
        :raises TaskFailedError: the task failed.
        :raises ResultTimeoutError: it did not finish in time.
        """
        st = self._wait(timeout, poll_interval)
        if st.is_failure:
            raise TaskFailedError(self.task_uuid, st.error)
        return list(st.results or [])

    def get(self, timeout: float | None = None, poll_interval: float = 0.05) -> Any:
        """Block until done; the task's value (one result, a tuple of several, or None).

        :param timeout: seconds to wait (None: forever).
        :param poll_interval: longest pause between polls of backends that cannot block.
        :raises TaskFailedError: the task failed.
        :raises ResultTimeoutError: it did not finish in time.
        """
        return _value(self.results(timeout, poll_interval))

    async def aget(self, timeout: float | None = None, poll_interval: float = 0.05) -> Any:
        """``get`` for asyncio code: polls without blocking the event loop."""
        import asyncio

        limit = _FOREVER if timeout is None else timeout
        deadline = time.monotonic() + limit
        delay = 0.001
        while True:
            st = await asyncio.to_thread(self._backend.get_state, self.task_uuid)
            if st is not None:
                self._state = st
                if st.is_failure:
                    raise TaskFailedError(self.task_uuid, st.error)
                if st.is_success:
                    return _value(st.results)
            if time.monotonic() >= deadline:
                raise ResultTimeoutError(self.task_uuid, limit, st.state if st else None)
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, poll_interval)


class GroupResult(list[AsyncResult]):
    """The :class:`AsyncResult` of each group member, in order (a list, as Go returns a slice).

    :param results: the members' results.
    :param group_uuid: the group's UUID.
    """

    def __init__(self, results: Iterable[AsyncResult], group_uuid: str = "") -> None:
        super().__init__(results)
        self.group_uuid = group_uuid

    def get(self, timeout: float | None = None, poll_interval: float = 0.05) -> list[Any]:
        """Every member's value, in group order (waits for all; ``timeout`` is for the whole group)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for r in self:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(r.get(left, poll_interval))
        return out

    def revoke(self, terminate: bool = False, expires_in: float | None = None) -> None:
        """Revoke every member (one write)."""
        if self:
            _revoke(self[0]._backend, [r.task_uuid for r in self], terminate, expires_in)

    def completed_count(self) -> int:
        """How many members are SUCCESS or FAILURE now."""
        return sum(1 for r in self if r.ready())

    def ready(self) -> bool:
        """True when every member is done."""
        return all(r.ready() for r in self)


class ChainAsyncResult:
    """The result of a chain: waits for each task in turn; ``get`` returns the last one's value.

    :param tasks: the chain's signatures, in order.
    :param backend: the result backend.
    """

    def __init__(self, tasks: Sequence[Signature], backend: Backend) -> None:
        self.async_results = [AsyncResult(t, backend, sent_later=i > 0) for i, t in enumerate(tasks)]
        self._backend = backend

    def revoke(self, terminate: bool = False, expires_in: float | None = None) -> None:
        """Revoke every step: each step is its own task (UUID), sent when the previous one
        succeeds, so all of them are revoked, not only the first; a revoked step ends the chain."""
        _revoke(self._backend, [r.task_uuid for r in self.async_results], terminate, expires_in)

    def results(self, timeout: float | None = None, poll_interval: float = 0.05) -> list[TaskResult]:
        """The typed results of the last task (Go's ``ChainAsyncResult.Get``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: list[TaskResult] = []
        for r in self.async_results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            last = r.results(left, poll_interval)
        return last

    def get(self, timeout: float | None = None, poll_interval: float = 0.05) -> Any:
        """The value of the last task of the chain."""
        return _value(self.results(timeout, poll_interval))


class ChordAsyncResult:
    """The result of a chord: waits for the group, then the callback.

    :param group_tasks: the group's signatures.
    :param callback: the chord callback.
    :param backend: the result backend.
    """

    def __init__(self, group_tasks: Sequence[Signature], callback: Signature, backend: Backend) -> None:
        self.group_results = GroupResult(AsyncResult(t, backend) for t in group_tasks)
        self.callback_result = AsyncResult(callback, backend, sent_later=True)
        self._backend = backend

    def revoke(self, terminate: bool = False, expires_in: float | None = None) -> None:
        """Revoke every member and the callback."""
        uuids = [r.task_uuid for r in self.group_results] + [self.callback_result.task_uuid]
        _revoke(self._backend, uuids, terminate, expires_in)

    def results(self, timeout: float | None = None, poll_interval: float = 0.05) -> list[TaskResult]:
        """The typed results of the callback (Go's ``ChordAsyncResult.Get``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for r in self.group_results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            r.results(left, poll_interval)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.callback_result.results(left, poll_interval)

    def get(self, timeout: float | None = None, poll_interval: float = 0.05) -> Any:
        """The value of the chord callback."""
        return _value(self.results(timeout, poll_interval))
