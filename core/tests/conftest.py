"""Core tests: the conformance suite's pytest plugin (for the memory and sqlite suites) and pytester
(for the suite's own guard tests)."""

pytest_plugins = ["machinery.testing.plugin", "pytester"]
