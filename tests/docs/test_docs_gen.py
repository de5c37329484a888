"""The generated reference pages (scripts/docs_gen.py) cover what the code declares."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import docs_gen  # noqa: E402


@pytest.fixture(scope="module")
def config_page() -> str:
    return docs_gen.configuration_page()


def test_every_core_key_and_variable_is_listed(config_page: str) -> None:
    from machinery.config import _CORE_ENV, Config

    for f in dataclasses.fields(Config):
        assert f"| `{f.name}` |" in config_page
    for var in _CORE_ENV:
        assert f"`{var}`" in config_page


def test_every_transport_section_option_and_variable_is_listed(config_page: str) -> None:
    sections = docs_gen._transports()
    assert set(sections) <= set(docs_gen.OPTION_CLASSES), "a transport section has no options class"
    for section, target in docs_gen.OPTION_CLASSES.items():
        module, _, name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError:
            pytest.skip(f"{module} is not installed")
        body = config_page.split(f"### `{section}:`", 1)[1].split("\n### ", 1)[0]
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in body, (section, f.name)
        for var in sections[section]["env"]:
            assert f"`{var}`" in body, (section, var)


@pytest.mark.skipif(docs_gen.go_source() is None, reason="Go Machinery's source is not next to the checkout")
def test_go_names_come_from_go_source(config_page: str) -> None:
    # Go's own (misspelt) variable for the separator, read from config/config.go, not from Python
    assert "`MULTIPLE_BROKEN_SEPARATOR`" in config_page
    assert "`ResultsExpireIn`, yaml `results_expire_in`, `RESULTS_EXPIRE_IN`" in config_page


def test_every_command_and_option_is_listed() -> None:
    from machinery.cli import build_parser

    page = docs_gen.cli_page()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert f"## `machinery {name}`" in page
        for action in parser._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert opt in page, (name, opt)
