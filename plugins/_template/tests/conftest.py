"""Enables the conformance suite's pytest plugin (its fixtures: ``server``, ``broker``,
``backend``, ``lock``, worker subprocesses...). The URL under test is in ``test_conformance.py``."""

from __future__ import annotations

pytest_plugins = ["machinery.testing.plugin"]
