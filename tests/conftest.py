"""Cross-plugin and end-to-end tests: every plugin is installed (``nox -s e2e``)."""

pytest_plugins = ["machinery.testing.plugin"]
