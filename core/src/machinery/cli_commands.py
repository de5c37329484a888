"""The commands of :mod:`machinery.cli` (``worker``, ``beat``, ``send``, ``status``, ``revoke``,
``inspect``, ``ping``, ``purge``, ``plugins``): each takes the parsed arguments and
returns the exit status. ``watch`` and ``dead`` are in :mod:`machinery.cli_ops`.

Like :mod:`machinery.cli`, this module imports only the standard library's ``argparse``,
``os`` and ``sys`` when loaded; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from machinery.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    CLIError,
    build_server,
    parse_arg,
)
from machinery.errors import ArgumentTypeError, ResultTimeoutError, TaskFailedError

# ``typing`` is not imported (see machinery.cli): type checkers treat ``TYPE_CHECKING`` as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime
    from typing import Any, TextIO

    from machinery.server import Server
    from machinery.signature import Signature

__all__ = [
    "cmd_beat",
    "cmd_inspect",
    "cmd_inspect_workers",
    "cmd_ping",
    "cmd_plugins",
    "cmd_purge",
    "cmd_revoke",
    "cmd_send",
    "cmd_status",
    "cmd_worker",
]


def _scheduler_class() -> Any:
    try:
        from machinery.schedule import Scheduler  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise CLIError(
            f"periodic tasks need the scheduler (machinery.schedule), which this installation lacks: {exc}"
        ) from None
    return Scheduler


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
    if args.prefetch is not None:
        worker.prefetch = args.prefetch
    if args.cpu_affinity is not None:
        worker.cpu_affinity = args.cpu_affinity
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
