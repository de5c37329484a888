"""``machinery watch`` and ``machinery dead``: the operator commands on sent work, kept out of
:mod:`machinery.cli` so that module stays small.

::

    machinery watch UUID... [--interval S] [--timeout S] [--plain]
    machinery dead list [-Q QUEUE] [--json]
    machinery dead show ID [-Q QUEUE] [--json]
    machinery dead replay ID... [-Q QUEUE] [--new-uuid] [--json]
    machinery dead purge [-Q QUEUE] [--yes]
"""

from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["add_commands", "cmd_dead", "cmd_watch"]


def add_commands(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add ``watch`` and ``dead`` to the parser (``command(name, help)`` makes a sub-parser)."""
    from machinery.cli_common import _seconds

    p = command("watch", "follow tasks (or groups) with a live progress bar until they end")
    p.add_argument("uuids", nargs="+", metavar="UUID", help="task UUIDs, or group UUIDs (one line per member)")
    p.add_argument("--interval", type=_seconds, default=0.5, help="seconds between two reads (default 0.5)")
    p.add_argument("--timeout", type=_seconds, default=None, help="give up after this many seconds (exit 124)")
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    p.add_argument("--app", metavar="MODULE[:ATTR]", help="use this app's configuration")
    p.set_defaults(func=cmd_watch)

    p = command("dead", "list, show, replay or purge the broker's dead letters")
    p.add_argument("action", choices=["list", "show", "replay", "purge"])
    p.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids (show: one; replay: one or more)")
    p.add_argument("--queue", "-Q", help="queue (default: every queue the broker can list)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--new-uuid", action="store_true", help="replay as a new task with a fresh UUID")
    p.add_argument("--yes", "-y", action="store_true", help="purge without asking")
    p.add_argument("--app", metavar="MODULE[:ATTR]", help="use this app's configuration")
    p.set_defaults(func=cmd_dead)


def cmd_watch(args: argparse.Namespace) -> int:
    """Draw the tasks' progress until they end; 0 when all succeeded, 1 otherwise, 124 on
    ``--timeout``."""
    from machinery.cli_common import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, CLIError, build_server
    from machinery.results import AsyncResult
    from machinery.watch import WatchTimeout, watch

    if any(not u.strip() for u in args.uuids):
        raise CLIError("UUID: must not be empty")
    server = build_server(args)
    try:
        backend = server.backend
        members: list[AsyncResult] = []
        for uuid in args.uuids:
            meta = _group_meta(backend, uuid)
            if meta is not None:
                members.extend(AsyncResult(u, backend) for u in meta.task_uuids)
            else:
                members.append(AsyncResult(uuid, backend))
        try:
            ok = watch(members, interval=args.interval, timeout=args.timeout, tty=False if args.plain else None)
        except WatchTimeout as exc:
            print(f"machinery: timed out: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
    finally:
        server.close()
    return EXIT_OK if ok else EXIT_FAILED


def _group_meta(backend: Any, uuid: str) -> Any:
    """The group record when ``uuid`` names a group rather than a task, else None (a store
    that keeps both under one key space holds JSON of the other kind under a task's UUID)."""
    from machinery.errors import DecodeError

    try:
        if backend.get_state(uuid) is not None:
            return None
    except DecodeError:
        pass
    try:
        meta = backend.get_group_meta(uuid)
    except DecodeError:
        return None
    return meta if meta is not None and meta.task_uuids else None


def cmd_dead(args: argparse.Namespace) -> int:
    """The ``dead`` sub-commands."""
    import json

    from machinery import deadletters as dl
    from machinery.cli_common import EXIT_FAILED, EXIT_OK, CLIError, build_server

    if args.action in ("show", "replay") and not args.ids:
        raise CLIError(f"dead {args.action}: give the id of a dead letter (see `machinery dead list`)")
    if args.action == "show" and len(args.ids) > 1:
        raise CLIError("dead show: one id at a time")
    if args.action in ("list", "purge") and args.ids:
        raise CLIError(f"dead {args.action}: takes no id (use -Q to choose a queue)")
    server = build_server(args)
    try:
        broker = server.broker
        try:
            dl.require_support(broker)
        except dl.DeadLetterError as exc:
            raise CLIError(str(exc), EXIT_FAILED) from None
        queue = args.queue or None
        if args.action == "list":
            letters = broker.list_dead_letters(queue)
            rows = [dl.describe(d) for d in letters]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for r in rows:
                    what = f"{r['task']} {r['uuid']}" if r["task"] is not None else r["error"]
                    when = r["dead_at"] or "-"
                    print(f"{r['id']}  {r['queue']}  {when}  {what}")
                where = f"queue {queue!r}" if queue else "all queues"
                print(f"{len(rows)} dead letter{'s' if len(rows) != 1 else ''} in {where}", file=sys.stderr)
            return EXIT_OK
        if args.action == "show":
            try:
                letter = dl.find(broker, args.ids[0], queue)
            except dl.DeadLetterError as exc:
                raise CLIError(str(exc), EXIT_FAILED) from None
            row = dl.describe(letter, full=True)
            if args.json:
                print(json.dumps(row, indent=2))
            else:
                for k, v in row.items():
                    if k not in ("body", "body_base64"):
                        print(f"{k:<11} {v}")
                print(row.get("body") or row.get("body_base64"))
            return EXIT_OK
        if args.action == "replay":
            return _replay(server, args, queue)
        return _purge(broker, args, queue)
    finally:
        server.close()


def _replay(server: Any, args: argparse.Namespace, queue: str | None) -> int:
    import json

    from machinery import deadletters as dl
    from machinery.cli_common import EXIT_FAILED, EXIT_OK

    code = EXIT_OK
    done = []
    for letter_id in args.ids:
        try:
            letter = dl.find(server.broker, letter_id, queue)
            r = dl.replay(server, letter, new_uuid=args.new_uuid)
        except dl.DeadLetterError as exc:
            print(f"machinery: error: {exc}", file=sys.stderr)
            code = EXIT_FAILED
            continue
        done.append({"id": letter_id, "uuid": r.task_uuid, "queue": r.queue, "removed": r.removed})
        if not r.removed:
            code = EXIT_FAILED
            print(
                f"machinery: warning: dead letter {letter_id!r} was published again as {r.task_uuid} but could "
                "not be removed from the dead letters",
                file=sys.stderr,
            )
        if not args.json:
            print(f"replayed {letter_id} as task {r.task_uuid} to queue {r.queue!r}")
    if args.json:
        print(json.dumps(done, indent=2))
    return code


def _purge(broker: Any, args: argparse.Namespace, queue: str | None) -> int:
    from machinery import deadletters as dl
    from machinery.cli_common import EXIT_FAILED, EXIT_OK

    where = f"queue {queue!r}" if queue else "every queue"
    if not args.yes:
        n = len(broker.list_dead_letters(queue))
        if n == 0:
            print(f"no dead letters in {where}")
            return EXIT_OK
        print(f"delete {n} dead letter{'s' if n != 1 else ''} of {where} for good? [y/N] ", end="", file=sys.stderr)
        sys.stderr.flush()
        try:
            answer = input()
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("not purged (pass --yes to purge without asking)", file=sys.stderr)
            return EXIT_FAILED
    n = dl.purge(broker, queue)
    print(f"purged {n} dead letter{'s' if n != 1 else ''} from {where}")
    return EXIT_OK
