"""machinery._entrypoints reads entry points as importlib.metadata does, without importing it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.metadata import entry_points as stdlib_entry_points
from pathlib import Path

import pytest

from machinery import _entrypoints
from machinery._entrypoints import EntryPoint, entry_points


def _stdlib(group: str) -> list[tuple[str, str, str, str]]:
    return [(ep.name, ep.value, ep.dist.name, ep.dist.version) for ep in stdlib_entry_points(group=group)]  # type: ignore[union-attr]


def _ours(group: str) -> list[tuple[str, str, str, str]]:
    return [(ep.name, ep.value, ep.dist_name, ep.dist_version) for ep in entry_points(group)]


def _dist(root: Path, dirname: str, name: str, version: str, entry_points_txt: str) -> Path:
    d = root / dirname
    d.mkdir(parents=True)
    (d / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: x\n\nName: not-a-header\n",
        encoding="utf-8",
    )
    (d / "entry_points.txt").write_text(entry_points_txt, encoding="utf-8")
    return d


@pytest.mark.parametrize("group", ["console_scripts", "machinery", "pytest11", "no.such.group"])
def test_same_entry_points_as_importlib_metadata(group: str) -> None:
    assert _entrypoints._scan(group) is not None  # the fast path is taken here
    assert _ours(group) == _stdlib(group)


def test_order_shadowing_comments_and_other_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _dist(
        first,
        "Fake_Plug-1.0.dist-info",
        "fake-plug",
        "1.0",
        "# a comment\n[console_scripts]\nfake = fake_mod:main\n\n[machinery]\n  fakeplug =  fake_mod \n"
        "fake2 = fake_mod:hooks.inner [extra]\n",
    )
    _dist(second, "fake_plug-2.0.dist-info", "fake-plug", "2.0", "[machinery]\nshadowed = other_mod\n")
    _dist(second, "other.plug-0.1.egg-info", "Other.Plug", "0.1", "[machinery]\nother = other_mod:hooks\n")
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))
    ours = _ours("machinery")
    assert ours == _stdlib("machinery")
    assert ours[:3] == [
        ("fakeplug", "fake_mod", "fake-plug", "1.0"),
        ("fake2", "fake_mod:hooks.inner [extra]", "fake-plug", "1.0"),
        ("other", "other_mod:hooks", "Other.Plug", "0.1"),
    ]
    assert _ours("console_scripts") == _stdlib("console_scripts")


def test_load_imports_the_module_and_follows_attributes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ep_target_mod.py").write_text("class hooks:\n    inner = 42\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert EntryPoint("x", "ep_target_mod:hooks.inner [extra]", "d", "1").load() == 42
    assert EntryPoint("x", "ep_target_mod", "d", "1").load() is sys.modules["ep_target_mod"]
    with pytest.raises(ValueError, match="malformed"):
        EntryPoint("x", "not a value!", "d", "1").load()


def test_a_zip_on_the_path_is_left_to_importlib_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped_plug-1.0.dist-info/METADATA", "Name: zipped-plug\nVersion: 1.0\n")
        z.writestr("zipped_plug-1.0.dist-info/entry_points.txt", "[machinery]\nzipped = zipped_mod\n")
    monkeypatch.syspath_prepend(str(archive))
    assert _entrypoints._scan("machinery") is None
    assert ("zipped", "zipped_mod", "zipped-plug", "1.0") in _ours("machinery")
    assert _ours("machinery") == _stdlib("machinery")


def test_a_distribution_finder_on_meta_path_is_left_to_importlib_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    class Finder:
        @staticmethod
        def find_spec(*args: object) -> None:
            return None

        @staticmethod
        def find_distributions(*args: object) -> list[object]:
            return []

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder])
    assert _entrypoints._scan("machinery") is None
    assert _ours("machinery") == _stdlib("machinery")


def test_loading_plugins_does_not_import_importlib_metadata_or_email() -> None:
    code = (
        "import sys\n"
        "from machinery.plugins import get_plugin_host\n"
        "host = get_plugin_host(); host.load()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('importlib.metadata', 'email', 'zipfile'))))\n"
        "print(len(host.infos()) >= 3)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout
