"""Waiting for results whose task has no state yet: gone, or sent later by a worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from machinery import Config, Server, Signature
from machinery.errors import StateNotFoundError
from machinery.results import AsyncResult, ChainAsyncResult, ChordAsyncResult
from machinery.state import TaskResult
from machinery.wire import new_uuid


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(Config(broker="memory://waits", result_backend="memory://waits", no_unix_signals=True))
    yield srv
    srv.close()


def _succeed_later(server: Server, sig: Signature, after: float) -> threading.Thread:
    def run() -> None:
        time.sleep(after)
        server.backend.set_state_success(sig, [TaskResult("int64", 7)])

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_task_without_any_state_is_gone_after_two_seconds(server: Server) -> None:
    t0 = time.monotonic()
    with pytest.raises(StateNotFoundError):
        AsyncResult(Signature("x", uuid=new_uuid("task_")), server.backend).get(timeout=30)
    assert time.monotonic() - t0 < 5


def test_a_later_chain_step_is_waited_for_until_its_worker_sends_it(server: Server) -> None:
    first, second = Signature("a", uuid=new_uuid("task_")), Signature("b", uuid=new_uuid("task_"))
    server.backend.set_state_success(first, [TaskResult("int64", 1)])
    t = _succeed_later(server, second, 3.0)  # a busy worker sends the next step 3 s later
    assert ChainAsyncResult([first, second], server.backend).get(timeout=30) == 7
    t.join()


def test_a_chord_callback_is_waited_for_until_its_worker_sends_it(server: Server) -> None:
    member, callback = Signature("m", uuid=new_uuid("task_")), Signature("cb", uuid=new_uuid("task_"))
    server.backend.set_state_success(member, [TaskResult("int64", 1)])
    t = _succeed_later(server, callback, 3.0)
    assert ChordAsyncResult([member], callback, server.backend).get(timeout=30) == 7
    t.join()
