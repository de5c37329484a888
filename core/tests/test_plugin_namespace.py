"""``machinery.plugin``, the plugin author's namespace, and the error classes users need."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

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
        "heavy = [m for m in ('pytest', 'asyncio', 'machinery.consume', 'machinery.consume_adapters',\n"
        "    'machinery.signature') if m in sys.modules]\n"
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


_PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
#: In-tree plugins not yet moved to ``machinery.plugin`` (strict xfail: moving one makes its case
#: pass, which fails until it is taken off this list).
_NOT_YET: dict[str, str] = {}


def _core_imports(path: Path) -> list[str]:
    """``module:line`` of every import of a core module other than ``machinery`` and
    ``machinery.plugin`` in one source file."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        for m in modules:
            if (m == "machinery" or m.startswith("machinery.")) and m not in ("machinery", "machinery.plugin"):
                bad.append(f"{path.name}:{node.lineno} {m}")
    return bad


@pytest.mark.parametrize(
    "plugin",
    [
        pytest.param(p.name, marks=pytest.mark.xfail(strict=True, reason=_NOT_YET[p.name]))
        if p.name in _NOT_YET
        else p.name
        for p in sorted(_PLUGINS.iterdir())
        if (p / "src").is_dir()
    ],
)
def test_in_tree_plugins_import_only_the_plugin_namespace(plugin: str) -> None:
    """A plugin's source imports the core only through ``machinery.plugin`` (and the public
    ``machinery``), so the core's other modules may move without breaking it."""
    files = sorted((_PLUGINS / plugin / "src").rglob("*.py"))
    assert files
    bad = [b for f in files for b in _core_imports(f)]
    assert not bad, f"{plugin} imports core modules directly: {bad}"


def test_the_import_check_sees_a_core_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "from machinery.plugin import Delivery\nimport machinery\n"
        "if True:\n    from machinery.config import Config\nimport machinery.signature as s\n"
    )
    assert sorted(_core_imports(f)) == ["m.py:4 machinery.config", "m.py:5 machinery.signature"]
