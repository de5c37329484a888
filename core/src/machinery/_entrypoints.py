"""Entry points of one group, read without importing :mod:`importlib.metadata` where possible.

``importlib.metadata`` imports ``email.message``, ``zipfile``, ``csv``, ``tempfile``, ``socket``
and more on every Python up to 3.13: about 22 ms and 2.5 MB in every process that resolves a URL
(each producer and each worker), to read a few small text files (measured by the "Plugin
discovery at start-up" section of ``benchmarks/run.py``; figures in docs/performance.md). This module reads the same
files the way ``importlib.metadata.entry_points(group=...)`` does (the ``*.dist-info`` and
``*.egg-info`` directories of each ``sys.path`` entry, in path order, the first distribution of a
name winning), and hands over to ``importlib.metadata`` itself whenever the environment holds
anything else: a zip file or an ``.egg`` on the path, or a ``sys.meta_path`` finder that provides
distributions of its own.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import import_module
from importlib.machinery import PathFinder

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["EntryPoint", "entry_points"]

#: ``importlib.metadata.EntryPoint.pattern``: ``module[:attr.attr] [extras]``.
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")


class EntryPoint:
    """One entry point, with the name and version of the distribution that declares it.

    :param name: the entry point's name.
    :param value: ``module`` or ``module:attr``.
    :param dist_name: the distribution's ``Name`` ("?" when unknown).
    :param dist_version: the distribution's ``Version`` ("?" when unknown).
    """

    __slots__ = ("dist_name", "dist_version", "name", "value")

    def __init__(self, name: str, value: str, dist_name: str, dist_version: str) -> None:
        self.name = name
        self.value = value
        self.dist_name = dist_name
        self.dist_version = dist_version

    def load(self) -> object:
        """Import the module and return the named attribute (the module without one)."""
        match = _VALUE.match(self.value)
        if match is None:
            raise ValueError(f"malformed entry point value {self.value!r}")
        obj: object = import_module(match.group("module"))
        for attr in (match.group("attr") or "").split("."):
            if attr:
                obj = getattr(obj, attr)
        return obj

    def __repr__(self) -> str:
        return f"EntryPoint({self.name!r}, {self.value!r}, {self.dist_name!r}, {self.dist_version!r})"


def entry_points(group: str) -> list[EntryPoint]:
    """The entry points of ``group`` from every installed distribution, in
    ``importlib.metadata.entry_points(group=group)``'s order."""
    found = _scan(group)
    if found is None:
        found = _with_importlib_metadata(group)
    return found


def _normalize(name: str) -> str:
    # importlib.metadata's ``Prepared.normalize``: PEP 503, with dashes as underscores.
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return None


def _scan(group: str) -> list[EntryPoint] | None:
    """The entry points read from the file system, or None when only importlib.metadata can tell."""
    for finder in sys.meta_path:
        if finder is not PathFinder and getattr(finder, "find_distributions", None) is not None:
            return None  # distributions that do not live in directories on sys.path
    seen: set[str] = set()
    out: list[EntryPoint] = []
    for entry in sys.path:
        if not isinstance(entry, str) or os.path.basename(entry).lower().endswith(".egg"):
            return None
        root = entry or "."
        try:
            children = os.listdir(root)
        except NotADirectoryError:
            return None  # a zip file
        except OSError:
            continue  # absent or unreadable: importlib.metadata finds nothing there either
        groups: dict[str, list[str]] = {}
        for child in children:
            low = child.lower()
            if low.endswith((".dist-info", ".egg-info")):
                groups.setdefault(_normalize(low.rpartition(".")[0].partition("-")[0]), []).append(child)
        for normalized, dirs in groups.items():
            for child in dirs:
                if normalized in seen:
                    continue
                seen.add(normalized)
                path = os.path.join(root, child)
                out.extend(_from_dist(path, _read(os.path.join(path, "entry_points.txt")), group))
    return out


def _from_dist(path: str, text: str | None, group: str) -> Iterable[EntryPoint]:
    if not text:
        return []
    pairs: list[tuple[str, str]] = []
    section = None
    for raw in text.splitlines():  # importlib.metadata's ``Sectioned`` format
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
        elif section == group:
            name, value = (part.strip() for part in line.split("=", 1))
            pairs.append((name, value))
    if not pairs:
        return []
    meta = _read(os.path.join(path, "METADATA")) or _read(os.path.join(path, "PKG-INFO")) or ""
    headers = _headers(meta)
    dist_name = headers.get("name", "?")
    dist_version = headers.get("version", "?")
    return [EntryPoint(name, value, dist_name, dist_version) for name, value in pairs]


def _headers(text: str) -> dict[str, str]:
    """The first value of each header of a core-metadata file (``Name: ...``, ``Version: ...``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the body (the long description) starts here
        if line[0] in " \t":
            continue  # a folded continuation line (never in Name or Version)
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip().lower(), value.strip())
    return out


def _with_importlib_metadata(group: str) -> list[EntryPoint]:
    try:
        from importlib.metadata import entry_points as _eps
    except ImportError:  # pragma: no cover
        from importlib_metadata import entry_points as _eps  # type: ignore[no-redef]
    out = []
    for ep in _eps(group=group):
        dist = getattr(ep, "dist", None)
        out.append(
            EntryPoint(
                ep.name,
                ep.value,
                dist.name if dist is not None else "?",
                dist.version if dist is not None else "?",
            )
        )
    return out
