"""``machinery.plugin``, the plugin author's namespace, and the error classes users need."""

from __future__ import annotations

import subprocess
import sys

import machinery
import machinery.errors
import machinery.plugin


def test_every_name_resolves_and_is_the_core_object() -> None:
    assert set(machinery.plugin.__all__) == set(machinery.plugin._LAZY)
    for name in machinery.plugin.__all__:
        value = getattr(machinery.plugin, name)
        module = sys.modules[machinery.plugin._LAZY[name]]
        assert value is getattr(module, name), name


def test_hook_module_import_stays_cheap() -> None:
    """A plugin's hook module takes ``hookimpl`` from here without loading the consume template
    (asyncio), the codec or pytest."""
    code = (
        "import sys\n"
        "from machinery.plugin import hookimpl, Register\n"
        "heavy = [m for m in ('pytest', 'asyncio', 'machinery.consume', 'machinery.signature') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_error_tree_exported() -> None:
    """Every error class of :mod:`machinery.errors` is reachable from ``machinery`` and from
    ``machinery.plugin`` (except the user-side ones the plugin namespace does not need)."""
    for name in machinery.errors.__all__:
        assert getattr(machinery, name) is getattr(machinery.errors, name), name
    for name in ("BrokerConnectionError", "BrokerAuthenticationError", "PublishError", "BackendConnectionError"):
        assert getattr(machinery.plugin, name) is getattr(machinery.errors, name)
