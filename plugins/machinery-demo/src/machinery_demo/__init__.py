"""``machinery demo``: a worker and the seed examples on a fresh embedded queue, as a CLI plugin.

This distribution adds one command to ``machinery`` through the ``machinery_cli_commands``
hook, so the core wheel holds only the library; it is also the smallest example of a CLI
plugin. The hook module imports nothing beyond ``machinery.plugin``'s marker: the demo itself
(:mod:`machinery_demo.run`) and its tasks (:mod:`machinery_demo.app`) load when the command
runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery.plugin import hookimpl

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

__all__ = ["machinery_cli_commands"]


def _seconds(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number of seconds, got {text!r}")
    return value


@hookimpl
def machinery_cli_commands(add_command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add ``machinery demo``."""
    p = add_command("demo", "see machinery work: a worker and the seed examples")
    p.add_argument("--plain", action="store_true", help="line output even on a terminal")
    p.add_argument("--keep", action="store_true", help="keep the demo's database and worker log")
    p.add_argument("--timeout", type=_seconds, default=20.0, help="seconds to wait for every result (default 20)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from machinery_demo.run import run_demo

    return run_demo(keep=args.keep, plain=args.plain, timeout=args.timeout)
