"""The ``machinery`` command line (stdlib ``argparse`` only).

::

    machinery worker --app MODULE[:ATTR] [--queue Q] [--concurrency N] [--beat]
    machinery send NAME [ARG ...] [--wait] [--timeout S] [--queue Q] [--eta TIME | --countdown S]
    machinery status UUID
    machinery inspect pending|delayed|workers [--queue Q] [--json]
    machinery ping [--queue Q] [--timeout S]
    machinery purge [--queue Q]
    machinery watch UUID... [--timeout S] [--plain]
    machinery dead list|show|replay|purge [ID ...] [-Q Q] [--json] [--new-uuid] [--yes]
    machinery plugins
    machinery beat --app MODULE[:ATTR]

Plugins add commands (``machinery dashboard``; ``machinery demo`` from machinery-demo).
Every command takes ``--config FILE`` (Go Machinery's YAML keys), ``--broker URL``,
``--backend URL`` and ``--loglevel``; the environment (``BROKER``, ``RESULT_BACKEND``...) sits
between the file and the flags. Exit status: 0 success, 1 failure (a task failed, nothing
found...), 2 bad usage or configuration, 124 ``send --wait`` timed out, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

from machinery.cli_common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    _cpu_affinity,
    _memory,
    _positive_int,
    _priority,
    _retry_count,
    _seconds,
    build_server,
    load_app,
    parse_arg,
)
from machinery.errors import ConfigError, MachineryError, UnknownSchemeError

# Only what ``--help`` and argument parsing need is imported with this module; each command
# (machinery.cli_commands, machinery.cli_ops) imports the rest (``json``, ``logging``, the
# config's dataclasses...) when it runs. For the same reason ``typing`` is not imported: type
# checkers treat ``TYPE_CHECKING`` as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

__all__ = ["CLIError", "build_server", "load_app", "main", "parse_arg"]


def _setup_logging(level: str, fmt: str | None = None) -> None:
    import logging

    fmt = fmt or os.environ.get("MACHINERY_LOG_FORMAT", "") or "text"
    if fmt == "text":
        logging.basicConfig(
            level=getattr(logging, level.upper()),
            format="[%(asctime)s] %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        return
    from machinery.jsonlog import LOG_FORMATS, configure

    if fmt not in LOG_FORMATS:
        raise CLIError(f"MACHINERY_LOG_FORMAT={fmt!r}: expected one of {', '.join(LOG_FORMATS)}")
    configure(level, fmt)


# -- parser -----------------------------------------------------------------------------------


def _terminal_columns() -> int:
    """The terminal width as ``shutil.get_terminal_size().columns`` finds it: ``$COLUMNS``, else
    the size of ``sys.__stdout__``'s terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, minus its ``import shutil`` (which brings ``bz2``, ``lzma`` and
    ``zlib`` into every worker, since each ``add_argument`` makes a formatter): the same width,
    found without ``shutil``."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, _terminal_columns() - 2 if width is None else width)


def build_parser(*, with_plugins: bool = False) -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests).

    :param with_plugins: also add the options and commands of plugins
        (``machinery_cli_arguments``, ``machinery_cli_commands``); this loads the plugins.
    """
    from machinery import __version__
    from machinery.cli_commands import (
        cmd_beat,
        cmd_inspect,
        cmd_ping,
        cmd_plugins,
        cmd_purge,
        cmd_revoke,
        cmd_send,
        cmd_status,
        cmd_worker,
    )

    common = argparse.ArgumentParser(add_help=False, formatter_class=_HelpFormatter)
    opts = common.add_argument_group("configuration")
    opts.add_argument("--config", metavar="FILE", help="YAML file with Go Machinery's keys (broker, ...)")
    opts.add_argument("--broker", metavar="URL", help="broker URL (overrides the file and $BROKER)")
    opts.add_argument("--backend", metavar="URL", help="result backend URL (overrides the file and $RESULT_BACKEND)")
    opts.add_argument(
        "--loglevel",
        default=None,
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
        help="logging level (default: info for worker and beat, warning otherwise)",
    )
    opts.add_argument(
        "--log-format",
        default=None,
        choices=["text", "json"],
        help="log lines as text or one JSON object per line (default: $MACHINERY_LOG_FORMAT or text)",
    )

    parser = argparse.ArgumentParser(
        prog="machinery",
        formatter_class=_HelpFormatter,
        description="Distributed task queue, wire-compatible with Go Machinery.",
        epilog="Quick start: bash scripts/demo.sh in a checkout (installs machinery-demo: `machinery demo`)",
    )
    parser.add_argument("--version", action="version", version=f"machinery {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's name
        return sub.add_parser(name, parents=[common], formatter_class=_HelpFormatter, help=help)

    p = command("worker", "run a worker for an app's tasks")
    p.add_argument("--app", required=True, metavar="MODULE[:ATTR]", help="module holding the Server")
    p.add_argument("--queue", "-Q", help="queue to consume (default: the config's default_queue)")
    p.add_argument("--concurrency", "-c", type=_positive_int, default=0, help="task threads (0: 8)")
    p.add_argument(
        "--prefetch",
        type=_positive_int,
        metavar="N",
        help="messages taken ahead of the task threads while tasks are quick "
        "(default: the broker's, 1, or -c on sqlite://; 0: none)",
    )
    p.add_argument(
        "--cpu-affinity",
        type=_cpu_affinity,
        metavar="auto|none|CPUS",
        help="keep the worker's threads on one CPU: auto (the worker picks one), a list such as 0 or 2-3, "
        "or none (default: $MACHINERY_WORKER_CPU_AFFINITY, else none; docs/worker.md)",
    )
    p.add_argument("--consumer-tag", help="name of this worker in logs")
    p.add_argument("--beat", action="store_true", help="also run the periodic scheduler in this worker")
    p.add_argument(
        "--heartbeat",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds between worker-registry announcements (default: $MACHINERY_WORKER_HEARTBEAT or 5)",
    )
    pool = p.add_argument_group("pools and time limits (docs/pools.md)")
    pool.add_argument(
        "--pool", choices=["threads", "processes"], default=None, help="where tasks run (default: threads)"
    )
    pool.add_argument("--time-limit", type=_seconds, metavar="SECONDS", help="hard time limit per task (0: none)")
    pool.add_argument("--soft-time-limit", type=_seconds, metavar="SECONDS", help="soft time limit per task")
    pool.add_argument(
        "--max-abandoned-threads",
        type=_positive_int,
        metavar="N",
        help="threads pool: exit with status 75 past N threads abandoned at the hard limit (default: -c)",
    )
    pool.add_argument(
        "--max-tasks-per-child", type=_positive_int, metavar="N", help="processes pool: replace a child after N tasks"
    )
    pool.add_argument(
        "--max-memory-per-child",
        type=_memory,
        metavar="SIZE",
        help="processes pool: replace a child past this resident memory (KiB, or 200MB, 1G)",
    )
    pool.add_argument(
        "--max-crashes",
        type=_positive_int,
        metavar="N",
        help="processes pool: child deaths running a task before it is stored as FAILURE (default 3)",
    )
    p.set_defaults(func=cmd_worker, default_level="info")

    p = command("send", "send a task (typed args: int64:1, []string:a,b, or inferred)")
    p.add_argument("name", help="registered task name")
    p.add_argument("args", nargs="*", metavar="ARG", help="TYPE:VALUE or a value whose type is inferred")
    p.add_argument("--app", metavar="MODULE[:ATTR]", help="use this app's configuration")
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    p.add_argument("--timeout", type=_seconds, default=60.0, help="seconds to wait with --wait (default 60)")
    p.add_argument("--queue", "-Q", help="queue (routing key) to send to")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--eta", metavar="TIME", help="run no earlier than this RFC 3339 time")
    when.add_argument("--countdown", type=_seconds, metavar="SECONDS", help="run after this many seconds")
    p.add_argument("--priority", type=_priority, default=0, help="0-255, where the broker supports it")
    p.add_argument("--retry-count", type=_retry_count, default=0, help="retries on failure (Fibonacci back-off)")
    p.set_defaults(func=cmd_send)

    p = command("status", "print a task's state (Go TaskState JSON)")
    p.add_argument("uuid")
    p.add_argument("--app", metavar="MODULE[:ATTR]", help="use this app's configuration")
    p.set_defaults(func=cmd_status)

    p = command("revoke", 'revoke tasks: not run (FAILURE "revoked"); --terminate stops running ones')
    p.add_argument("uuids", nargs="+", metavar="UUID", help="task UUIDs")
    p.add_argument("--terminate", action="store_true", help="also stop tasks that are running (best effort)")
    p.add_argument(
        "--expires-in",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds the revocation is kept (default: results_expire_in)",
    )
    p.add_argument("--app", metavar="MODULE[:ATTR]", help="use this app's configuration")
    p.set_defaults(func=cmd_revoke)

    p = command("inspect", "list pending or delayed tasks, or the live workers")
    p.add_argument("what", choices=["pending", "delayed", "workers"])
    p.add_argument("--queue", "-Q", help="queue (default: the config's default_queue; delayed and workers: all)")
    p.add_argument("--json", action="store_true", help="one Go signature JSON per line (workers: one JSON array)")
    p.add_argument("--app", metavar="MODULE[:ATTR]", help="use this app's configuration")
    p.set_defaults(func=cmd_inspect)

    p = command("ping", "exit 0 when a live worker consumes the queue (health checks)")
    p.add_argument("--queue", "-Q", help="queue (default: the config's default_queue)")
    p.add_argument("--timeout", type=_seconds, default=0.0, help="seconds to wait for a worker to appear (default 0)")
    p.add_argument("--app", metavar="MODULE[:ATTR]", help="use this app's configuration")
    p.set_defaults(func=cmd_ping)

    p = command("purge", "delete the waiting messages of a queue")
    p.add_argument("--queue", "-Q", help="queue (default: the config's default_queue)")
    p.add_argument("--app", metavar="MODULE[:ATTR]", help="use this app's configuration")
    p.set_defaults(func=cmd_purge)

    p = command("plugins", "list plugins, their schemes and hooks")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = command("beat", "run only the periodic task scheduler")
    p.add_argument("--app", required=True, metavar="MODULE[:ATTR]", help="module holding the Server")
    p.set_defaults(func=cmd_beat, default_level="info")

    from machinery.cli_ops import add_commands

    add_commands(command)
    if with_plugins:
        _add_plugin_cli(sub, command)
    return parser


def _add_plugin_cli(sub: Any, command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    from machinery.plugins import get_plugin_host

    host = get_plugin_host()
    builtin = dict(sub.choices)

    def add_command(name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's name
        if name in sub.choices:
            raise CLIError(f"a plugin adds the command {name!r}, which already exists")
        return command(name, help)

    host.cli_commands(add_command)
    for name, parser in builtin.items():
        host.cli_arguments(name, parser)


def _fail(message: str, code: int) -> NoReturn:
    print(f"machinery: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    :param argv: arguments without the program name (default: ``sys.argv[1:]``).
    """
    try:
        parser = build_parser(with_plugins=True)
    except MachineryError as exc:  # a plugin's option or command clashes
        _fail(str(exc), getattr(exc, "code", EXIT_USAGE))
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        _setup_logging(args.loglevel or getattr(args, "default_level", "warning"), args.log_format)
        from machinery.plugins import get_plugin_host

        get_plugin_host().cli_started(args.command, args)
        return func(args)
    except CLIError as exc:
        _fail(str(exc), exc.code)
    except (ConfigError, UnknownSchemeError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except MachineryError as exc:
        _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` and the like: exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
