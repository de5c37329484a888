"""The fault suite's tooling (:mod:`machinery.testing.faults`): the real-command-line worker
(:class:`CliWorker`), the restartable private server (:class:`RestartableServer`), and the
figures (:func:`write_figures`, :func:`render_table`, and :func:`main` behind
``python -m machinery.testing.faults report``). Import them from :mod:`machinery.testing.faults`."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from machinery.signature import Arg, Signature
from machinery.testing._support import SubprocessWorker

if TYPE_CHECKING:
    from machinery.config import Config

__all__ = ["FIGURES_ENV", "CliWorker", "RestartableServer", "main", "render_table", "write_figures"]

#: The environment variable naming the directory the scenarios write their figures to.
FIGURES_ENV = "MACHINERY_FAULTS_FIGURES"


# ---------------------------------------------------------------------------------------------
# Workers: the real command line
# ---------------------------------------------------------------------------------------------


class CliWorker(SubprocessWorker):
    """``python -m machinery worker --app machinery.testing.app:worker_server``: a real worker
    process, configured through the ``MACHINERY_TEST_*`` variables of
    :func:`machinery.testing.app.config_to_env`.

    :param config: the configuration (URLs, queue, transport options).
    :param log_path: file receiving the worker's stdout and stderr.
    :param concurrency: task threads.
    """

    def __init__(self, config: Config, log_path: Path, concurrency: int = 2) -> None:
        from machinery.testing.app import config_to_env

        self.name = f"machinery worker ({log_path.name})"
        self.log_path = log_path
        env = {**os.environ, **config_to_env(config, concurrency), "PYTHONUNBUFFERED": "1"}
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "machinery",
                "worker",
                "--app",
                "machinery.testing.app:worker_server",
                "--concurrency",
                str(concurrency),
                "--consumer-tag",
                f"fault-{log_path.stem}",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


# ---------------------------------------------------------------------------------------------
# Private servers the plugin can restart
# ---------------------------------------------------------------------------------------------


class RestartableServer(ABC):
    """A private server of the plugin under test, which the restart scenario stops and starts.

    Never the shared server other tests use. Return one (started) from the ``restartable_server``
    fixture of your :class:`FaultConformance` subclass.
    """

    #: What it is, for the figures table (e.g. ``"redis, private, AOF appendfsync always"``).
    description: ClassVar[str] = ""
    #: True when what the server accepted survives a stop (an AOF, a durable queue on disk):
    #: the scenario then asserts that nothing accepted is lost.
    persistent: ClassVar[bool] = True

    @property
    @abstractmethod
    def broker_url(self) -> str:
        """The broker URL of this server."""

    @property
    def backend_url(self) -> str | None:
        """A result backend URL on this server, or None (the suite's default backend is used)."""
        return None

    @abstractmethod
    def start(self) -> None:
        """Start (or start again) and return once the server accepts clients."""

    @abstractmethod
    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server with ``sig`` (SIGTERM: clean shutdown, SIGKILL: crash) and wait for it."""


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def write_figures(label: str, scenario: str, figures: Mapping[str, Any]) -> None:
    """Write one scenario's figures to ``$MACHINERY_FAULTS_FIGURES/<label>--<scenario>.json`` (when set)."""
    out = os.environ.get(FIGURES_ENV)
    print(f"fault figures [{label} / {scenario}]: {json.dumps(figures, sort_keys=True)}")
    if not out:
        return
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{label}--{scenario}").strip("-").lower()
    data = {"configuration": label, "scenario": scenario, "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    data.update(figures)
    (path / f"{slug}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The figures as a Markdown table, one row per configuration and scenario."""
    order = {"sigkill": 0, "restart": 1, "fuzz": 2}
    lines = [
        "| configuration | scenario | sent | completed | lost | duplicated | recovery (s, max) "
        "| bad inputs tried | notes |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in sorted(rows, key=lambda r: (str(r["configuration"]), order.get(str(r["scenario"]), 9))):
        lines.append(
            "| "
            + " | ".join(
                _fmt(r.get(k))
                for k in (
                    "configuration",
                    "scenario",
                    "sent",
                    "completed",
                    "lost",
                    "duplicated",
                    "recovery_s",
                    "bad_inputs",
                    "notes",
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


_BEGIN = "<!-- faults-table:begin (generated by `python -m machinery.testing.faults report`) -->"
_END = "<!-- faults-table:end -->"


def _report(args: argparse.Namespace) -> int:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    store = Path(args.store) if args.store else None
    if store is not None and store.exists():
        for row in json.loads(store.read_text()):
            merged[(row["configuration"], row["scenario"])] = row
    for d in args.figures:
        for f in sorted(Path(d).glob("*.json")):
            row = json.loads(f.read_text())
            merged[(row["configuration"], row["scenario"])] = row
    rows = list(merged.values())
    table = render_table(rows)
    print(table, end="")
    if store is not None and args.write:
        store.write_text(json.dumps(sorted(rows, key=lambda r: (r["configuration"], r["scenario"])), indent=1) + "\n")
    if args.write:
        doc = Path(args.write)
        text = doc.read_text()
        if _BEGIN not in text or _END not in text:
            print(f"{doc}: no table markers ({_BEGIN} ... {_END})", file=sys.stderr)
            return 1
        head, _, rest = text.partition(_BEGIN)
        _, _, tail = rest.partition(_END)
        doc.write_text(f"{head}{_BEGIN}\n{table}{_END}{tail}")
        print(f"wrote the table into {doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m machinery.testing.faults report DIR... [--write DOC] [--store JSON]``."""
    parser = argparse.ArgumentParser(prog="python -m machinery.testing.faults")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="print (and write) the figures table")
    rep.add_argument("figures", nargs="*", help="directories of figure files written by a fault run")
    rep.add_argument("--write", metavar="DOC", help="replace the table between the markers of this Markdown file")
    rep.add_argument(
        "--store",
        metavar="JSON",
        default="docs/reliability-figures.json",
        help="all figures so far, merged with the new ones (default: docs/reliability-figures.json)",
    )
    args = parser.parse_args(argv)
    return _report(args)


# ---------------------------------------------------------------------------------------------
# The record of executions
# ---------------------------------------------------------------------------------------------


def _work(path: Path, index: int, seconds: float) -> Signature:
    """A ``fault_work`` task (see :func:`machinery.testing.app.fault_work`)."""
    return Signature("fault_work", [Arg("string", str(path)), Arg("int64", index), Arg("float64", float(seconds))])


@dataclass
class _Runs:
    """The parsed append-only record of :func:`machinery.testing.app.fault_work`."""

    starts: dict[int, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    dones: dict[int, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def read(cls, path: Path) -> _Runs:
        runs = cls()
        if not path.exists():
            return runs
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue
            kind, idx, pid, at = parts
            (runs.starts if kind == "S" else runs.dones)[int(idx)].append((int(pid), float(at)))
        return runs

    def completed(self) -> set[int]:
        return {i for i, d in self.dones.items() if d}
