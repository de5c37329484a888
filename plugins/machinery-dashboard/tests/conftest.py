"""The conformance suite's pytest plugin (URL fixtures, isolation)."""

pytest_plugins = ["machinery.testing.plugin"]
