"""``machinery dashboard``: its options, and the refusal to serve a public address openly."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from machinery.plugin import ConfigError

__all__ = ["add_arguments", "check_exposure", "cmd_dashboard", "is_loopback"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``machinery dashboard``; sets ``func``."""
    parser.add_argument("--app", metavar="MODULE[:ATTR]", help="module holding the Server (optional)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5555, help="port (default 5555; 0 picks a free one)")
    parser.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        default=None,
        help="require HTTP basic auth (default: $MACHINERY_DASHBOARD_AUTH); needed to bind a non-loopback address",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="require this bearer token, or open /?token=... once (default: $MACHINERY_DASHBOARD_TOKEN)",
    )
    parser.add_argument(
        "--hide-args",
        action="append",
        default=[],
        metavar="PATTERN",
        help="hide the arguments and results of tasks whose name matches (fnmatch, repeatable; '*' hides all)",
    )
    parser.add_argument(
        "--index",
        metavar="FILE",
        default=None,
        help="the dashboard's own index of tasks (default: ~/.cache/machinery-dashboard/<hash of the backend URL>.db)",
    )
    parser.set_defaults(func=cmd_dashboard)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, auth: str | None, token: str | None) -> None:
    """:raises ConfigError: ``host`` is not a loopback address and neither auth nor a token is
    set, or ``auth`` is not ``USER:PASSWORD``."""
    if auth is not None and (":" not in auth or not auth.split(":", 1)[0] or not auth.split(":", 1)[1]):
        raise ConfigError("dashboard.auth", "expected USER:PASSWORD with both parts non-empty")
    if token is not None and len(token) < 16:
        raise ConfigError("dashboard.token", "too short: use at least 16 characters")
    if not is_loopback(host) and not auth and not token:
        raise ConfigError(
            "dashboard.host",
            f"refusing to serve the dashboard on {host!r} without authentication: it can revoke tasks and purge "
            "queues. Pass --auth USER:PASSWORD or --token TOKEN (or $MACHINERY_DASHBOARD_AUTH / "
            "$MACHINERY_DASHBOARD_TOKEN), or bind 127.0.0.1",
        )


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted."""
    from machinery.plugin import build_server
    from machinery_dashboard.app import Dashboard

    auth = args.auth if args.auth is not None else os.environ.get("MACHINERY_DASHBOARD_AUTH") or None
    token = args.token if args.token is not None else os.environ.get("MACHINERY_DASHBOARD_TOKEN") or None
    check_exposure(args.host, auth, token)
    server = build_server(args)
    dash = Dashboard(server, auth=auth, token=token, hide_args=args.hide_args, index_path=args.index)
    try:
        httpd = dash.serve(args.host, args.port)
        host, port = str(httpd.server_address[0]), httpd.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"machinery dashboard on http://{shown}:{port}/ (Ctrl-C stops it)", file=sys.stderr, flush=True)
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        dash.close()
        server.close()
    return 0
