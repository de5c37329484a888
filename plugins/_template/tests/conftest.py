"""Fixtures for the conformance suite.

TEMPLATE: for a real server, read its URL from an environment variable with a default, and call
``require_server`` so that an unreachable server fails in CI and skips (naming the URL) locally::

    @pytest.fixture
    def url() -> str:
        url = os.environ.get("MYSERVER_URL", "myserver://127.0.0.1:1234")
        require_server(url)
        return url

Tests must isolate themselves (unique queue names and key prefixes, which the suite provides)
and never flush a whole server.
"""

from __future__ import annotations

import uuid

import pytest

pytest_plugins = ["machinery.testing.plugin"]


@pytest.fixture
def url() -> str:
    """The URL under test: a fresh in-process example server per test."""
    return f"template://t{uuid.uuid4().hex[:12]}"
