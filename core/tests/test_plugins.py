"""The plugin host: registration through hooks, lazy loading, helpful errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from machinery import Config, MachineryError, Server, UnknownSchemeError, hookimpl
from machinery.builtin.memory import MemoryBroker
from machinery.plugins import PluginHost, get_plugin_host, scheme_of


def test_builtin_transports_register_through_the_same_hooks() -> None:
    host = PluginHost(load_entry_points=False)
    assert {"memory", "sqlite"} <= set(host.schemes("broker"))
    assert {"memory", "sqlite"} <= set(host.schemes("backend"))
    assert {"memory", "sqlite"} <= set(host.schemes("lock"))
    assert host.broker_class("memory://") is MemoryBroker
    infos = {i.name: i for i in host.infos()}
    assert infos["machinery.builtin.memory"].distribution == "machinery-core"
    assert "machinery_register_transports" in infos["machinery.builtin.memory"].hooks


def test_missing_plugin_error_names_the_package_to_install() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        Server(Config(broker="nosuchthing://x", result_backend="memory://"))
    assert "nosuchthing" in str(info.value)
    host = get_plugin_host()
    if "sqs" not in host.schemes("broker"):
        with pytest.raises(UnknownSchemeError, match=r"pip install machinery-sqs"):
            Server(Config(broker="sqs://queue", result_backend="memory://"))


def test_scheme_of() -> None:
    assert scheme_of("redis+socket:///tmp/x.sock") == "redis+socket"
    assert scheme_of("AMQP://h") == "amqp"
    with pytest.raises(UnknownSchemeError):
        scheme_of("nourl")


class _DupPlugin:
    @hookimpl
    def machinery_register_brokers(self, register: Any) -> None:
        register("memory", MemoryBroker)


def test_second_claim_on_a_scheme_names_both_distributions() -> None:
    host = PluginHost(load_entry_points=False)
    host.pm.register(_DupPlugin(), name="dup-plugin")
    with pytest.raises(
        MachineryError, match=r"claimed by both (machinery-core and dup-plugin|dup-plugin and machinery-core)"
    ):
        host.load()


class _CustomBroker(MemoryBroker):
    """A third-party broker registered by string."""


class _StringPlugin:
    @hookimpl
    def machinery_register_brokers(self, register: Any) -> None:
        register("custom", f"{__name__}:_CustomBroker")
        register("broken", f"{__name__}:DoesNotExist")


def test_lazy_string_registration_and_import_errors() -> None:
    host = PluginHost(load_entry_points=False)
    host.pm.register(_StringPlugin(), name="strings")
    assert host.broker_class("custom://x") is _CustomBroker
    with pytest.raises(MachineryError, match="cannot import"):
        host.broker_class("broken://x")


def test_failing_entry_point_is_reported_and_others_still_load(tmp_path: Any) -> None:
    # a fake installed distribution whose plugin module raises on import
    dist = tmp_path / "bad_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[machinery]\nbad = bad_plugin_mod\n")
    (tmp_path / "bad_plugin_mod.py").write_text("raise RuntimeError('kaboom at import')\n")
    code = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        from machinery.plugins import PluginHost
        h = PluginHost()
        print(sorted(h.schemes("broker")))
        print([str(f) for f in h.failures])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "'memory'" in out.stdout
    assert "bad-plugin 1.0" in out.stdout and "kaboom at import" in out.stdout and "machinery-core" in out.stdout


def test_disable_plugins_env(tmp_path: Any) -> None:
    dist = tmp_path / "extra_plugin-2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-plugin\nVersion: 2.0\n")
    (dist / "entry_points.txt").write_text("[machinery]\nextra = extra_plugin_mod\n")
    (tmp_path / "extra_plugin_mod.py").write_text(
        "from machinery import hookimpl\nfrom machinery.builtin.memory.broker import MemoryBroker\n"
        "@hookimpl\ndef machinery_register_brokers(register):\n    register('extra', MemoryBroker)\n"
    )
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from machinery.plugins import PluginHost\nprint('extra' in PluginHost().schemes('broker'))\n"
    )
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    off = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "MACHINERY_DISABLE_PLUGINS": "extra"},
    )
    assert on.stdout.strip() == "True", on.stderr
    assert off.stdout.strip() == "False", off.stderr
