"""pytest fixtures for *applications'* tests: run your tasks against an in-process queue, with an
in-thread worker or in eager mode, without a broker server.

Enable them in your ``conftest.py`` and say which :class:`~machinery.Server` is your app's::

    pytest_plugins = ["machinery.testing.fixtures"]

    @pytest.fixture
    def machinery_app():
        from myapp.tasks import server
        return server

Then, in a test:

* ``machinery_test_worker``: your app's server, re-bound for the test to a fresh ``memory://``
  store (override ``machinery_test_url`` for ``sqlite:///...``), with a worker running in a
  thread of the test process. Whatever your code sends through the app's server (the module
  level object it imports) goes to that worker. The worker is stopped, the transports closed
  and the server's own broker and backend put back after the test.
* ``machinery_test_server``: the same re-bound server without a worker (to inspect what was
  sent: ``get_pending_tasks()``, states...).
* ``machinery_eager_server``: the app's server in eager mode (:mod:`machinery.eager`): each
  ``send_*`` runs the work in the test's thread and returns when it is done.

Outside pytest, :func:`use_transport` and :func:`running_worker` do the same as context
managers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from machinery.server import Server
    from machinery.worker import Worker

__all__ = [
    "machinery_app",
    "machinery_eager_server",
    "machinery_test_server",
    "machinery_test_url",
    "machinery_test_worker",
    "running_worker",
    "use_transport",
]


@contextmanager
def use_transport(server: Server, url: str = "", *, eager: bool = False) -> Iterator[Server]:
    """Re-bind ``server`` to the broker, backend and lock of ``url`` (a fresh ``memory://``
    store when empty), or to eager mode, until the block ends; then close those and put the
    server's own configuration and transports back.

    The same object is re-bound (not a copy), so application code that imports the server
    sends through the test transport. Not for a server that a running worker uses.
    """
    from machinery.builtin.memory import _store as memory

    own_store = not url and not eager
    if own_store:
        url = f"memory://pytest-{uuid.uuid4().hex}"
    saved = (server.config, server._broker, server._backend, server._lock_obj)
    server.config = server.config.replace(
        broker="" if eager else url,
        result_backend="" if eager else url,
        lock="" if eager else url,
        eager=eager,
        no_unix_signals=True,
    )
    broker = backend = None
    try:
        broker = server._make("broker", server.broker_url)
        assign = getattr(broker, "assign_server", None)
        if assign is not None:
            assign(server)
        backend = server._make("backend", server.backend_url)
        server._bind(broker, backend, None)
        yield server
    finally:
        lock = server._lock_obj
        for t in (broker, backend, lock):
            if t is not None:
                t.close()
        server.config = saved[0]
        server._bind(*saved[1:])
        if own_store:
            name = memory.store_name(url)
            with memory._registry_lock:
                for table in (memory._brokers, memory._backends, memory._locks):
                    table.pop(name, None)


@contextmanager
def running_worker(server: Server, concurrency: int = 2, queue: str | None = None) -> Iterator[Worker]:
    """A worker of ``server`` consuming in background threads until the block ends (then it
    stops consuming and lets its in-flight tasks finish, for at most 30 s)."""
    worker = server.new_worker(consumer_tag="pytest-worker", concurrency=concurrency, queue=queue)
    worker.launch_in_background()
    try:
        yield worker
    finally:
        worker.quit(wait=True, timeout=30)


@pytest.fixture
def machinery_app() -> Server:
    """Your application's :class:`~machinery.Server`. **Override this fixture** in your
    ``conftest.py`` to return it."""
    raise pytest.UsageError(
        "the machinery fixtures need your app's server: define a `machinery_app` fixture in your "
        "conftest.py that returns it (see machinery.testing.fixtures)"
    )


@pytest.fixture
def machinery_test_url() -> str:
    """The transport URL the app is re-bound to: empty for a fresh ``memory://`` store per
    test. Override it to return ``f"sqlite:///{tmp_path / 'test.db'}"`` for the embedded
    database (persistent, as a deployed worker sees it)."""
    return ""


@pytest.fixture
def machinery_test_server(machinery_app: Server, machinery_test_url: str) -> Iterator[Server]:
    """The app's server, re-bound to the test transport for the test (no worker)."""
    with use_transport(machinery_app, machinery_test_url) as server:
        yield server


@pytest.fixture
def machinery_test_worker(machinery_test_server: Server) -> Iterator[Worker]:
    """An in-thread worker of the re-bound app server (2 task threads); stopped after the test."""
    with running_worker(machinery_test_server) as worker:
        yield worker


@pytest.fixture
def machinery_eager_server(machinery_app: Server) -> Iterator[Server]:
    """The app's server in eager mode for the test: ``send_*`` runs the work at once."""
    with use_transport(machinery_app, eager=True) as server:
        yield server
