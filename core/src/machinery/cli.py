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
    machinery demo

Every command takes ``--config FILE`` (Go Machinery's YAML keys), ``--broker URL``,
``--backend URL`` and ``--loglevel``; the environment (``BROKER``, ``RESULT_BACKEND``...) sits
between the file and the flags. Exit status: 0 success, 1 failure (a task failed, nothing
found...), 2 bad usage or configuration, 124 ``send --wait`` timed out, 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from machinery.cli_common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CLIError,
    _memory,
    _positive_int,
    _priority,
    _retry_count,
    _seconds,
    build_server,
    load_app,
)
from machinery.errors import (
    ArgumentTypeError,
    ConfigError,
    MachineryError,
    ResultTimeoutError,
    TaskFailedError,
    UnknownSchemeError,
)

# Only what ``--help`` and argument parsing need is imported with this module; each command
# imports the rest (``json``, ``logging``, the config's dataclasses...) when it runs. For the
# same reason ``typing`` is not imported: type checkers treat ``TYPE_CHECKING`` as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from collections.abc import Callable, Mapping, Sequence
    from datetime import datetime
    from typing import Any, NoReturn, TextIO

    from machinery.server import Server
    from machinery.signature import Arg, Signature

__all__ = ["CLIError", "load_app", "main", "parse_arg"]

# -- typed arguments ---------------------------------------------------------------------------

_numbers: tuple[re.Pattern[str], re.Pattern[str]] | None = None


def _number_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    global _numbers
    if _numbers is None:
        import re

        _numbers = (re.compile(r"[+-]?\d+\Z"), re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)\Z"))
    return _numbers


def _infer(text: str) -> Any:
    int_re, float_re = _number_patterns()
    if int_re.match(text):
        return int(text)
    if float_re.match(text):
        value = float(text)
        return value if math.isfinite(value) else text
    if text in ("true", "false"):
        return text == "true"
    return text


def _candidates(text: str) -> list[Any]:
    # A value as JSON (1, true, [1,2], "x"), then as the raw text.
    import json

    out: list[Any] = []
    try:
        out.append(json.loads(text))
    except ValueError:
        pass
    out.append(text)
    return out


_GO_KINDS = ("int", "uint", "float", "complex", "bool", "string", "byte", "rune", "map[", "interface")


def _looks_like_a_type(prefix: str, known: frozenset[str]) -> bool:
    """True when ``prefix`` (the text before the first ``:``) was meant as a Go type name: it
    starts like one (``int99``, ``[]x``, ``map[...]``) or is a near miss of a known one
    (``strin``, ``bol``). Other prefixes (``http``, ``a``) are part of a plain string."""
    import difflib

    base = prefix.removeprefix("[]")
    if prefix.startswith("[]") or base.startswith(_GO_KINDS):
        return True
    return bool(base.isalnum() and difflib.get_close_matches(base, known, n=1, cutoff=0.8))


def parse_arg(text: str) -> Arg:
    """A task argument from the command line.

    ``TYPE:VALUE`` with a Go type name (``int64:1``, ``string:x``, ``bool:true``,
    ``[]int64:1,2``, ``[]string:a,b``, ``float64:2.5``); a slice's value may also be JSON
    (``[]int64:[1,2]``). Without a type prefix the type is inferred: ``1`` is ``int64``,
    ``1.5`` is ``float64``, ``true``/``false`` are ``bool``, anything else is a ``string``
    (``http://x``, ``a:b``). A prefix that looks like a Go type but is none (``int99:1``,
    ``strin:x``) is an error, never silently a string: to send such a text as it is, prefix
    it with ``string:`` (``string:int99:1`` sends ``"int99:1"``).

    :raises ArgumentTypeError: an unknown type, or a value that does not fit the named type.
    """
    from machinery.signature import GO_TYPES, Arg

    type_name, sep, value = text.partition(":")
    if not sep or type_name not in GO_TYPES:
        if sep and _looks_like_a_type(type_name, GO_TYPES):
            raise ArgumentTypeError(
                type_name,
                value,
                f"unknown Go type {type_name!r} in {text!r} (known: int, int8..int64, uint..uint64, float32, "
                f"float64, bool, string, []byte and []T of those); to send the text as it is, write "
                f"string:{text}",
            )
        return Arg.of(_infer(text))
    # The most telling error wins: the value read as JSON (300 for int8: out of range), then
    # the comma-separated list of a slice, then the raw text (abc for int64: not an integer).
    errors: list[ArgumentTypeError] = []
    tries = _candidates(value)
    if type_name.startswith("[]"):
        items = [v.strip() for v in value.split(",")] if value.strip() else []
        tries.insert(len(tries) - 1, [_infer(v) for v in items])
        tries.append(items)
    for candidate in tries:
        try:
            return Arg(type_name, candidate)
        except ArgumentTypeError as exc:
            errors.append(exc)
    raise ArgumentTypeError(type_name, value, f"cannot read {value!r} as {type_name}: {errors[0].reason}")


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


def _scheduler_class() -> Any:
    try:
        from machinery.schedule import Scheduler  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise CLIError(
            f"periodic tasks need the scheduler (machinery.schedule), which this installation lacks: {exc}"
        ) from None
    return Scheduler


# -- commands ---------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker until SIGINT/SIGTERM (once: finish in-flight tasks; twice: exit now)."""
    server = build_server(args)
    if args.beat:
        _scheduler_class()
    worker = server.new_worker(consumer_tag=args.consumer_tag or "", concurrency=args.concurrency, queue=args.queue)
    worker.beat = args.beat
    if args.heartbeat is not None:
        if args.heartbeat <= 0:
            raise CLIError("--heartbeat must be a positive number of seconds")
        worker.heartbeat = args.heartbeat
    _pool_options(worker, args)
    try:
        worker.launch()
    finally:
        server.close()
    return worker.exit_code or EXIT_OK


def _pool_options(worker: Any, args: argparse.Namespace) -> None:
    """Apply the worker command's pool and time-limit options (docs/pools.md) over the config's."""
    worker.app = args.app
    if args.pool is not None:
        worker.pool = args.pool
    if args.time_limit is not None:
        worker.time_limit = args.time_limit or None
    if args.soft_time_limit is not None:
        worker.soft_time_limit = args.soft_time_limit or None
    for name in ("max_abandoned_threads", "max_tasks_per_child", "max_memory_per_child", "max_crashes"):
        value = getattr(args, name)
        if value is not None:
            setattr(worker, name, value)
    if worker.max_crashes < 1:
        raise CLIError("--max-crashes must be at least 1")


def cmd_beat(args: argparse.Namespace) -> int:
    """Run only the periodic scheduler of the app."""
    import logging
    import signal
    import threading

    from machinery.config import redact_url

    log = logging.getLogger("machinery.cli")
    scheduler_class = _scheduler_class()
    server = build_server(args)
    if not server.periodic_entries:
        raise CLIError(f"--app {args.app!r} registers no periodic tasks (server.register_periodic_task...)")
    stop = threading.Event()
    hits = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal hits
        hits += 1
        if hits > 1:
            os._exit(128 + signum)
        log.warning("signal %s: stopping the scheduler", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    log.info(
        "beat: %d periodic entr%s, broker %s, lock %s",
        len(server.periodic_entries),
        "y" if len(server.periodic_entries) == 1 else "ies",
        redact_url(server.broker_url),
        redact_url(server.lock_url),
    )
    try:
        scheduler_class(server).run_forever(stop_event=stop)
    finally:
        server.close()
    return EXIT_OK


def _json_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        import base64

        return base64.b64encode(value).decode("ascii")
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def _print_json(value: Any, out: TextIO) -> None:
    import json

    print(json.dumps(_json_value(value), default=str, ensure_ascii=False), file=out)


def _parse_eta(text: str) -> datetime:
    from datetime import datetime, timezone

    from machinery.signature import parse_time

    try:
        return parse_time(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise CLIError(f"--eta {text!r}: expected an RFC 3339 / ISO 8601 time, e.g. 2030-01-31T12:00:00Z") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def cmd_send(args: argparse.Namespace) -> int:
    """Send one task; print its UUID and, with ``--wait``, its result."""
    from datetime import datetime, timedelta, timezone

    from machinery.signature import Signature

    if not args.name.strip():
        raise CLIError("task name: must not be empty")
    try:
        task_args = [parse_arg(a) for a in args.args]
    except ArgumentTypeError as exc:
        raise CLIError(f"argument: {exc}") from None
    eta = None
    if args.eta is not None:
        eta = _parse_eta(args.eta)
    elif args.countdown is not None:
        eta = datetime.now(timezone.utc) + timedelta(seconds=args.countdown)
    sig = Signature(
        args.name,
        args=task_args,
        routing_key=args.queue or "",
        eta=eta,
        priority=args.priority,
        retry_count=args.retry_count,
    )
    server = build_server(args)
    try:
        result = server.send_task(sig)
        print(sig.uuid, flush=True)
        if not args.wait:
            return EXIT_OK
        try:
            value = result.get(timeout=args.timeout)
        except TaskFailedError as exc:
            print(f"FAILURE: {exc.error}", file=sys.stderr)
            return EXIT_FAILED
        except ResultTimeoutError as exc:
            print(f"machinery: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
        _print_json(value, sys.stdout)
        return EXIT_OK
    finally:
        server.close()


def cmd_status(args: argparse.Namespace) -> int:
    """Print a task's stored state as Go Machinery's TaskState JSON."""
    from machinery.signature import encode_task_state

    if not args.uuid.strip():
        raise CLIError("task UUID: must not be empty")
    server = build_server(args)
    try:
        state = server.get_state(args.uuid)
    finally:
        server.close()
    if state is None:
        raise CLIError(f"no state stored for {args.uuid} (unknown, expired or purged)", EXIT_FAILED)
    print(encode_task_state(state).decode("utf-8"))
    if state.progress is not None:  # also in the JSON's "Progress" key; this line is for people
        print(f"progress: {state.progress.describe()}", file=sys.stderr)
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke tasks: they never run (FAILURE "revoked"); with --terminate running ones stop too."""
    uuids = [u.strip() for u in args.uuids if u.strip()]
    if not uuids:
        raise CLIError("task UUID: must not be empty")
    server = build_server(args)
    try:
        cls = type(server.backend)
        if not cls.supports_revocation:
            raise CLIError(f"the {cls.__name__} result backend cannot store revocations", EXIT_FAILED)
        try:
            done = server.revoke(*uuids, terminate=args.terminate, expires_in=args.expires_in)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    finally:
        server.close()
    what = "revoked and terminating" if args.terminate else "revoked"
    for uuid in done:
        print(f"{uuid}  {what}")
    return EXIT_OK


def _describe(sig: Signature) -> str:
    import json

    from machinery.signature import format_time

    args = ", ".join(json.dumps(_json_value(a.value), default=str) for a in sig.args)
    parts = [f"{sig.uuid}  {sig.name}({args})", f"queue={sig.routing_key or '-'}"]
    if sig.eta is not None:
        parts.append(f"eta={format_time(sig.eta)}")
    if sig.priority:
        parts.append(f"priority={sig.priority}")
    if sig.retry_count:
        parts.append(f"retries_left={sig.retry_count}")
    return "  ".join(parts)


def _registry_backend(server: Server) -> None:
    cls = type(server.backend)
    if not cls.supports_worker_registry:
        raise CLIError(f"the {cls.__name__} result backend has no worker registry", EXIT_FAILED)


def _describe_worker(info: Any, now: float) -> str:
    running = ", ".join(f"{c.get('name')}[{c.get('uuid')}]" for c in info.current) or "-"
    return (
        f"{info.worker_id}  host={info.host} pid={info.pid} queues={','.join(info.queues)} "
        f"concurrency={info.concurrency} pool={info.pool} up={now - info.started:.0f}s "
        f"done={info.tasks_done} failed={info.tasks_failed} running={running}"
    )


def cmd_inspect_workers(args: argparse.Namespace) -> int:
    """List the live workers from the worker registry."""
    import json
    import time

    from machinery.registry import live_workers

    server = build_server(args)
    try:
        _registry_backend(server)
        workers = live_workers(server.backend, args.queue or None)
    finally:
        server.close()
    if args.json:
        print(json.dumps([w.to_dict() for w in workers], default=str))
        return EXIT_OK
    now = time.time()
    for w in workers:
        print(_describe_worker(w, now))
    where = f" for queue {args.queue!r}" if args.queue else ""
    print(f"{len(workers)} live worker{'s' if len(workers) != 1 else ''}{where}", file=sys.stderr)
    return EXIT_OK


def cmd_ping(args: argparse.Namespace) -> int:
    """Exit 0 when at least one live worker consumes the queue (within ``--timeout``), else 1."""
    import time

    from machinery.registry import live_workers

    server = build_server(args)
    queue = args.queue or server.config.default_queue
    deadline = time.monotonic() + args.timeout
    try:
        _registry_backend(server)
        while True:
            workers = live_workers(server.backend, queue)
            if workers or time.monotonic() >= deadline:
                break
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    finally:
        server.close()
    if not workers:
        print(f"machinery: no live worker for queue {queue!r}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{len(workers)} live worker{'s' if len(workers) != 1 else ''} for queue {queue!r}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    """List pending or delayed tasks, or the live workers."""
    from machinery.signature import encode_signature

    if args.what == "workers":
        return cmd_inspect_workers(args)
    server = build_server(args)
    try:
        broker_cls = type(server.broker)
        queue = args.queue or server.config.default_queue
        if args.what == "pending":
            if not broker_cls.supports_pending_listing:
                raise CLIError(f"the {broker_cls.__name__} broker cannot list pending tasks", EXIT_FAILED)
            sigs = server.get_pending_tasks(queue)
            where = f"in queue {queue!r}"
        else:
            if not broker_cls.supports_delayed_listing:
                raise CLIError(f"the {broker_cls.__name__} broker cannot list delayed tasks", EXIT_FAILED)
            sigs = server.get_delayed_tasks()
            if args.queue:
                sigs = [s for s in sigs if s.routing_key == args.queue]
            where = f"in queue {args.queue!r}" if args.queue else "in all queues"
    finally:
        server.close()
    for sig in sigs:
        print(encode_signature(sig).decode("utf-8") if args.json else _describe(sig))
    if not args.json:
        print(f"{len(sigs)} {args.what} task{'s' if len(sigs) != 1 else ''} {where}", file=sys.stderr)
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    """Delete the waiting messages of a queue."""
    server = build_server(args)
    try:
        broker_cls = type(server.broker)
        if not broker_cls.supports_purge:
            raise CLIError(f"the {broker_cls.__name__} broker cannot purge queues", EXIT_FAILED)
        queue = args.queue or server.config.default_queue
        n = server.broker.purge(queue)
    finally:
        server.close()
    print(f"purged {n} message{'s' if n != 1 else ''} from queue {queue!r}")
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every plugin: distribution, version, schemes, hooks, and load failures."""
    import json

    from machinery.plugins import get_plugin_host

    host = get_plugin_host()
    infos = host.infos()
    if args.json:
        payload = [
            {
                "name": i.name,
                "distribution": i.distribution,
                "version": i.version,
                "schemes": i.schemes,
                "hooks": i.hooks,
                "error": i.error,
                "dead_letters": _dead_letter_schemes(host, i.schemes.get("broker", [])),
                **_control_json(host, i.schemes),
            }
            for i in infos
        ]
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    for info in infos:
        status = "FAILED" if info.error else "ok"
        print(f"{info.name}  ({info.distribution} {info.version})  [{status}]")
        if info.schemes:
            schemes = "  ".join(f"{kind}: {', '.join(sorted(s))}" for kind, s in sorted(info.schemes.items()))
            print(f"    schemes  {schemes}")
        if info.hooks:
            print(f"    hooks    {', '.join(info.hooks)}")
        dead = _dead_letter_schemes(host, info.schemes.get("broker", []))
        if dead:
            print(f"    dead letters  {', '.join(dead)}  (machinery dead)")
        for scheme in sorted(info.schemes.get("backend", ()))[:1]:
            print(f"    control  {_control_capabilities(host, scheme)}")
        if info.error:
            print(f"    error    {info.error}")
    for failure in host.failures:
        if not any(i.error and i.name == failure.entry_point for i in infos):
            print(f"{failure.entry_point}  ({failure.distribution})  [FAILED]\n    error    {failure.reason}")
    return EXIT_OK


def _dead_letter_schemes(host: Any, schemes: Sequence[str]) -> list[str]:
    """The broker schemes whose class declares ``supports_dead_letters``."""
    out = []
    for scheme in sorted(schemes):
        try:
            if host.broker_class(f"{scheme}://").supports_dead_letters:
                out.append(scheme)
        except Exception:  # noqa: BLE001 - a class that cannot load is reported elsewhere
            continue
    return out


def _control_json(host: Any, schemes: Mapping[str, Any]) -> dict[str, Any]:
    """``{"control": {"revoke": bool, "rate_limits": "shared"|"per-worker"}}`` for a plugin
    serving a backend (``machinery plugins --json``); empty otherwise."""
    backends = sorted(schemes.get("backend", ()))
    if not backends:
        return {}
    try:
        cls = host.backend_class(f"{backends[0]}://")
    except Exception:  # noqa: BLE001 - shown as unknown
        return {"control": None}
    rate = "shared" if cls.supports_rate_limit else "per-worker"
    return {"control": {"revoke": bool(cls.supports_revocation), "rate_limits": rate}}


def _control_capabilities(host: Any, scheme: str) -> str:
    """One line on the backend's revoke and rate-limit support, for ``machinery plugins``."""
    try:
        cls = host.backend_class(f"{scheme}://")
    except Exception as exc:  # noqa: BLE001 - shown instead of the capabilities
        return f"(backend not importable: {exc})"
    revoke = "revoke: yes" if cls.supports_revocation else "revoke: no"
    rate = "rate limits: shared by all workers" if cls.supports_rate_limit else "rate limits: per worker (fallback)"
    return f"{revoke}; {rate}"


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the guided demo on a fresh embedded queue."""
    from machinery.demo import run_demo

    return run_demo(keep=args.keep, plain=args.plain, timeout=args.timeout)


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
        epilog="Quick start: machinery demo",
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

    p = command("demo", "see machinery work: a worker and the seed examples")
    p.add_argument("--plain", action="store_true", help="line output even on a terminal")
    p.add_argument("--keep", action="store_true", help="keep the demo's database and worker log")
    p.add_argument("--timeout", type=_seconds, default=20.0, help="seconds to wait for every result (default 20)")
    p.set_defaults(func=cmd_demo)

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
