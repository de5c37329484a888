"""The dashboard's web server: stdlib ``http.server`` with a thread per request.

Pages are rendered on the server as plain HTML (every value escaped); a small hand-written
script (``static/dashboard.js``) draws workflow graphs as inline SVG and refreshes pages from a
server-sent event stream (``/stream``). Actions are POSTs carrying a per-process CSRF token,
checked along with the ``Origin`` header. Responses forbid inline scripts and framing
(``Content-Security-Policy``).
"""

from __future__ import annotations

import base64
import fnmatch
import hmac
import html
import json
import logging
import re
import secrets
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from machinery.plugin import redact_url
from machinery_dashboard.graph import backend_group, backend_state, build_graph, display_state, signature_doc
from machinery_dashboard.ingest import Ingester
from machinery_dashboard.log import EventLog, log_for
from machinery_dashboard.store import EventStore, SQLiteStore, TaskRecord, default_index_path, settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from machinery import Server

__all__ = ["Dashboard", "scrub"]

log = logging.getLogger("machinery.dashboard")

#: Seconds the event stream reads back behind its cursor (writers' clocks and batching).
STREAM_OVERLAP = 2.0
STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE")
_URL_CREDENTIALS = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def scrub(text: str) -> str:
    """``text`` with the credentials of any URL in it replaced (``redis://***@host``)."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def e(value: object) -> str:
    """HTML-escaped text."""
    return html.escape("" if value is None else str(value), quote=True)


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _badge(state: str) -> str:
    return f'<span class="state s-{e(state.lower())}">{e(state)}</span>'


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Dashboard:
    """The dashboard of one machinery :class:`~machinery.server.Server`.

    :param server: the server whose broker and backend are shown.
    :param auth: ``USER:PASSWORD`` for HTTP basic auth, or None.
    :param token: a bearer token (header, or ``/?token=`` once, kept in a cookie), or None.
    :param hide_args: fnmatch patterns of task names whose arguments and results are hidden.
    :param index_path: the index file (default: :func:`~machinery_dashboard.store.default_index_path`).
    """

    def __init__(
        self,
        server: Server,
        *,
        auth: str | None = None,
        token: str | None = None,
        hide_args: Sequence[str] = (),
        index_path: str | None = None,
    ) -> None:
        self.server = server
        self.auth = auth
        self.token = token
        self.hide_args = list(hide_args)
        self.csrf = secrets.token_urlsafe(32)
        self.log: EventLog | None = log_for(server.backend)
        self.store: EventStore | None = None
        self.ingester: Ingester | None = None
        if self.log is not None:
            retention, max_tasks = settings()
            self.store = SQLiteStore(index_path or default_index_path(server.backend_url), retention, max_tasks)
            self.ingester = Ingester(self.log, self.store)
        self.closing = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    # -- serving --------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        """Bind ``host:port`` and return the server (call ``serve_forever`` on it)."""
        dash = self

        class Handler(_Handler):
            dashboard = dash

        ThreadingHTTPServer.daemon_threads = True
        cls = ThreadingHTTPServer
        if ":" in host:
            import socket

            class V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            cls = V6
        self._httpd = cls((host.strip("[]"), port), Handler)
        if self.ingester is not None:
            self.ingester.start()
        return self._httpd

    def close(self) -> None:
        """Stop the event streams and release the store."""
        self.closing.set()
        if self.ingester is not None:
            self.ingester.stop()
        if self._httpd is not None:
            self._httpd.server_close()
        if self.store is not None:
            self.store.close()

    def hidden(self, name: str) -> bool:
        """True when ``name``'s arguments and results are hidden."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.hide_args)

    # -- data -----------------------------------------------------------------------------------

    def task_json(self, uuid: str) -> dict[str, Any] | None:
        """What the graph's side panel and ``/api/task`` show of a task."""
        rec = self.store.get(uuid) if self.store is not None else None
        st = backend_state(self.server.backend, uuid)
        if rec is None and st is None:
            return None
        out: dict[str, Any] = rec.to_json() if rec is not None else {"uuid": uuid, "name": ""}
        if st is not None:
            out["state"] = display_state(st.state, st.error)
            out["name"] = out.get("name") or st.task_name
            out["error"] = out.get("error") or st.error
        else:
            out["state"] = display_state(out.get("state", ""), out.get("error", ""))
        hide = self.hidden(str(out.get("name", "")))
        if hide:
            out["results"] = "(hidden)"
        elif st is not None and st.results and not out.get("results"):
            out["results"] = json.dumps([{"type": r.type, "value": r.value} for r in st.results], default=repr)
        for k in ("error", "traceback", "results"):
            if isinstance(out.get(k), str):
                out[k] = scrub(out[k])
        return out

    def queues(self) -> list[str]:
        """The default queue, the live workers' queues and those holding dead letters."""
        names = {self.server.config.default_queue}
        for w in self.workers():
            names.update(w.queues)
        broker = self.server.broker
        if type(broker).supports_dead_letters:
            try:
                names.update(d.queue for d in broker.list_dead_letters())
            except Exception:
                log.debug("listing dead letters failed", exc_info=True)
        return sorted(names)

    def workers(self) -> list[Any]:
        """The live workers (empty without a registry)."""
        backend = self.server.backend
        if not type(backend).supports_worker_registry:
            return []
        from machinery.plugin import live_workers

        return live_workers(backend)

    def queue_counts(self, queue: str) -> dict[str, str]:
        """Pending, delayed and dead counts of ``queue`` (``n/a`` where the broker cannot tell)."""
        broker = self.server.broker
        cls = type(broker)
        out: dict[str, str] = {}
        checks: tuple[tuple[str, bool, Callable[[], int]], ...] = (
            ("pending", cls.supports_pending_listing, lambda: len(broker.pending_tasks(queue))),
            (
                "delayed",
                cls.supports_delayed_listing,
                lambda: sum(1 for s in broker.delayed_tasks() if broker.queue_for(s) == queue),
            ),
            ("dead", cls.supports_dead_letters, lambda: len(broker.list_dead_letters(queue))),
        )
        for key, supported, fn in checks:
            try:
                out[key] = str(fn()) if supported else "n/a"
            except Exception as exc:  # noqa: BLE001 - shown, never fatal
                out[key] = f"error: {scrub(str(exc))[:80]}"
        return out

    def workflow_uuids(self, uuid: str) -> list[str]:
        """Every task UUID of the workflow of ``uuid``."""
        g = build_graph(uuid, self.store, self.server.backend)
        return [u for u in g.nodes if u.count(":") < 2] if g is not None else []


# -- the request handler ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "machinery-dashboard"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Requests go to the debug log (the query string may hold a token: it is cut)."""
        log.debug("%s %s", self.command, self.path.split("?", 1)[0])

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _html(self, body: str, status: int = 200) -> None:
        self._send(status, body.encode("utf-8"), "text/html; charset=utf-8")

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj, default=str).encode("utf-8"), "application/json")

    def _authorized(self) -> bool:
        d = self.dashboard
        if not d.auth and not d.token:
            return True
        header = self.headers.get("Authorization", "")
        if d.auth and header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:].strip()).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                given = ""
            if hmac.compare_digest(given.encode(), d.auth.encode()):
                return True
        if d.token:
            if header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip().encode(), d.token.encode()):
                return True
            for part in self.headers.get("Cookie", "").split(";"):
                k, _, v = part.strip().partition("=")
                if k == "machinery_dashboard" and hmac.compare_digest(v.encode(), d.token.encode()):
                    return True
        return False

    def _challenge(self) -> None:
        realm = 'Basic realm="machinery dashboard", charset="UTF-8"'
        headers = {"WWW-Authenticate": realm} if self.dashboard.auth else {}
        self._send(401, b"authentication required\n", "text/plain; charset=utf-8", headers)

    def _query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}

    def do_HEAD(self) -> None:
        """As GET, without the body."""
        self.do_GET()

    def do_GET(self) -> None:
        """Pages, JSON, static files and the event stream."""
        path = urlsplit(self.path).path
        query = self._query()
        d = self.dashboard
        if d.token and "token" in query and hmac.compare_digest(query["token"].encode(), d.token.encode()):
            cookie = f"machinery_dashboard={d.token}; HttpOnly; SameSite=Strict; Path=/"
            self._send(303, b"", "text/plain", {"Location": path or "/", "Set-Cookie": cookie})
            return
        if not self._authorized():
            self._challenge()
            return
        try:
            self._route_get(path, query)
        except _Redirect as r:
            self._send(303, b"", "text/plain", {"Location": r.location})
        except _HTTPError as exc:
            self._html(_page(d, "Error", f'<p class="error">{e(exc)}</p>'), exc.status)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:
            log.exception("dashboard: %s failed", path)
            self._html(_page(d, "Error", f'<p class="error">{e(scrub(f"{type(exc).__name__}: {exc}"))}</p>'), 500)

    def do_POST(self) -> None:
        """Actions: revoke, replay, purge (CSRF token and same origin required)."""
        if not self._authorized():
            self._challenge()
            return
        d = self.dashboard
        length = int(self.headers.get("Content-Length") or 0)
        if length > 1_000_000:
            self._send(413, b"too large\n", "text/plain")
            return
        raw = self.rfile.read(length).decode("utf-8", "replace")
        form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        origin = self.headers.get("Origin")
        host = self.headers.get("Host", "")
        if origin and origin != "null" and urlsplit(origin).netloc != host:
            self._send(403, b"cross-origin request refused\n", "text/plain")
            return
        if not hmac.compare_digest(form.get("csrf", "").encode(), d.csrf.encode()):
            self._send(403, b"missing or wrong CSRF token: reload the page\n", "text/plain")
            return
        path = urlsplit(self.path).path
        try:
            message = self._route_post(path, form)
        except _HTTPError as exc:
            message = str(exc)
        except Exception as exc:
            log.exception("dashboard: %s failed", path)
            message = scrub(f"failed: {type(exc).__name__}: {exc}")
        back = form.get("back", "/")
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        sep = "&" if "?" in back else "?"
        self._send(303, b"", "text/plain", {"Location": f"{back}{sep}{urlencode({'msg': message})}"})

    # -- GET routes -----------------------------------------------------------------------------

    def _route_get(self, path: str, q: dict[str, str]) -> None:
        d = self.dashboard
        m: re.Match[str] | None
        if path.startswith("/static/"):
            name = path[len("/static/"):]
            if name not in _STATIC:
                raise _HTTPError(404, "not found")
            body = resources.files("machinery_dashboard").joinpath("static").joinpath(name).read_bytes()
            self._send(200, body, _STATIC[name])
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        elif path == "/stream":
            self._stream()
        elif path == "/":
            self._page("Overview", _overview(d), q, live=True)
        elif path == "/tasks":
            self._page("Tasks", _tasks(d, q), q, live=True)
        elif m := re.fullmatch(r"/task/([^/]+)", path):
            self._page("Task", _task(d, m.group(1)), q)
        elif m := re.fullmatch(r"/workflow/([^/]+)", path):
            self._page("Workflow", _workflow(d, m.group(1)), q)
        elif path == "/dead":
            self._page("Dead letters", _dead(d, q), q, live=True)
        elif m := re.fullmatch(r"/dead/([^/]+)", path):
            self._page("Dead letter", _dead_one(d, m.group(1), q.get("queue") or None), q)
        elif m := re.fullmatch(r"/api/workflow/([^/]+)", path):
            g = build_graph(m.group(1), d.store, d.server.backend)
            if g is None:
                raise _HTTPError(404, "no such task or group")
            self._json(g.to_json())
        elif m := re.fullmatch(r"/api/task/([^/]+)", path):
            t = d.task_json(m.group(1))
            if t is None:
                self._json({"error": "no such task"}, 404)
            else:
                self._json(t)
        else:
            raise _HTTPError(404, "not found")

    def _page(self, title: str, body: str | tuple[str, str], q: dict[str, str], *, live: bool = False) -> None:
        """Render a page; ``body`` may be ``(fixed, live)``: only the live part is refreshed
        (``?partial=1`` returns it alone)."""
        fixed, region = body if isinstance(body, tuple) else ("", body)
        if q.get("partial"):
            self._html(region)
            return
        self._html(_page(self.dashboard, title, region, live=live, msg=q.get("msg", ""), fixed=fixed))

    def _stream(self) -> None:
        d = self.dashboard
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        # Records are stamped with their writer's clock: read with an overlap of STREAM_OVERLAP
        # seconds (so a writer a little behind is not skipped) and drop what was already sent.
        cursor = time.time() - STREAM_OVERLAP
        sent: dict[tuple[str, float], float] = {}
        last = time.monotonic()
        self.wfile.write(b"retry: 2000\n\n")
        self.wfile.flush()
        while not d.closing.is_set():
            changed: list[dict[str, Any]] = []
            if d.store is not None:
                try:
                    found, top = d.store.changed_since(cursor)
                    changed = [c for c in found if (c["uuid"], c["updated"]) not in sent]
                    for c in changed:
                        sent[(c["uuid"], c["updated"])] = c["updated"]
                    cursor = max(cursor, min(top, time.time()) - STREAM_OVERLAP) if len(found) < 500 else top
                    sent = {k: v for k, v in sent.items() if v > cursor}
                except Exception:
                    log.debug("stream: reading changes failed", exc_info=True)
            if changed:
                self.wfile.write(f"data: {json.dumps(changed)}\n\n".encode())
                self.wfile.flush()
                last = time.monotonic()
            elif time.monotonic() - last > 15:
                self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
                last = time.monotonic()
            d.closing.wait(0.5)

    # -- POST routes ----------------------------------------------------------------------------

    def _route_post(self, path: str, form: dict[str, str]) -> str:
        d = self.dashboard
        server = d.server
        if path == "/revoke":
            uuids = [u for u in re.split(r"[\s,]+", form.get("uuids", "")) if u]
            if form.get("workflow"):
                uuids += d.workflow_uuids(form["workflow"])
            if not uuids:
                raise _HTTPError(400, "nothing to revoke")
            if not type(server.backend).supports_revocation:
                raise _HTTPError(400, f"the {type(server.backend).__name__} backend cannot store revocations")
            done = server.revoke(*uuids, terminate=form.get("terminate") == "1")
            return f"revoked {len(done)} task{'s' if len(done) != 1 else ''}"
        if path == "/dead/replay":
            from machinery import deadletters

            letter = deadletters.find(server.broker, form.get("id", ""), form.get("queue") or None)
            r = deadletters.replay(server, letter)
            kept = "" if r.removed else " (it could not be removed from the dead letters)"
            return f"replayed dead letter {letter.id} as task {r.task_uuid} on {r.queue}{kept}"
        if path == "/purge":
            queue = form.get("queue", "")
            if not queue or form.get("confirm", "") != queue:
                raise _HTTPError(400, "purge not done: type the queue's name to confirm")
            if not type(server.broker).supports_purge:
                raise _HTTPError(400, f"the {type(server.broker).__name__} broker cannot purge queues")
            n = server.broker.purge(queue)
            return f"purged {n} message{'s' if n != 1 else ''} from {queue}"
        raise _HTTPError(404, "no such action")


# -- pages ---------------------------------------------------------------------------------------


def _csrf(d: Dashboard, back: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(d.csrf)}"><input type="hidden" name="back" value="{e(back)}">'


def _page(d: Dashboard, title: str, body: str, *, live: bool = False, msg: str = "", fixed: str = "") -> str:
    nav = "".join(
        f'<a href="{href}">{label}</a>'
        for href, label in (("/", "Overview"), ("/tasks", "Tasks"), ("/dead", "Dead letters"))
    )
    flash = f'<p class="flash" id="flash">{e(msg)}</p>' if msg else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · machinery</title>"
        '<link rel="stylesheet" href="/static/dashboard.css"><script src="/static/dashboard.js" defer></script>'
        f'</head><body data-live="{1 if live else 0}"><header><strong>machinery</strong>{nav}'
        '<form class="search" action="/tasks" method="get"><input name="q" placeholder="task or group UUID" '
        'aria-label="search by UUID"></form></header>'
        f'<main><h1>{e(title)}</h1>{flash}{fixed}<div id="live">{body}</div></main></body></html>'
    )


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _overview(d: Dashboard) -> str:
    server = d.server
    now = time.time()
    out = ['<section><h2>Workers</h2>']
    if not type(server.backend).supports_worker_registry:
        out.append(f"<p>The {e(type(server.backend).__name__)} backend has no worker registry.</p>")
    else:
        rows = []
        for w in d.workers():
            current = ", ".join(
                f'<a href="/task/{e(quote(str(c.get("uuid", ""))))}">{e(c.get("name", ""))}</a>' for c in w.current
            )
            rows.append([
                e(w.consumer_tag), e(f"{w.host}:{w.pid}"), e(", ".join(w.queues)), e(w.concurrency),
                e(w.tasks_done), e(w.tasks_failed), current or "idle", e(f"{max(0.0, now - w.heartbeat):.0f}s ago"),
            ])
        out.append(_table(["worker", "host:pid", "queues", "threads", "done", "failed", "running", "heartbeat"], rows,
                          "workers") if rows else "<p>No live worker.</p>")
    out.append("</section><section><h2>Queues</h2>")
    counts = d.store.counts(int(now // 60) - 5) if d.store is not None else {}
    done_5m = sum(n for m in counts.values() for s, n in m.items() if s in ("SUCCESS", "FAILURE"))
    rows = []
    for q in d.queues():
        c = d.queue_counts(q)
        purge = (
            f'<form method="post" action="/purge" class="purge">{_csrf(d, "/")}<input type="hidden" name="queue" '
            f'value="{e(q)}"><input name="confirm" placeholder="type {e(q)} to confirm" aria-label="confirm purge">'
            '<button>purge</button></form>'
        )
        rows.append([e(q), e(c["pending"]), e(c["delayed"]), f'<a href="/dead?queue={e(quote(q))}">{e(c["dead"])}</a>',
                     purge])
    out.append(_table(["queue", "pending", "delayed", "dead", ""], rows, "queues"))
    out.append(f"<p>Finished over the last 5 minutes: {done_5m} ({done_5m / 300:.2f}/s, all queues).</p>")
    out.append("</section><section><h2>Tasks per state, last hour</h2>")
    if d.store is None:
        out.append(f"<p>The {e(type(server.backend).__name__)} backend keeps no dashboard event log (sqlite:// and "
                   "redis:// do): tasks can be looked up by UUID only.</p>")
    else:
        out.append(_chart(d.store.counts(int(now // 60) - 59), int(now // 60)))
    out.append("</section><section><h2>Setup</h2>")
    kept = d.store.total() if d.store is not None else 0
    out.append(_table(["", ""], [
        ["broker", e(redact_url(server.broker_url))],
        ["result backend", e(redact_url(server.backend_url))],
        ["event log", e(f"{type(d.log).__name__}: {d.log.retention:.0f}s, at most {d.log.max_events} events")
                      if d.log is not None else "none"],
        ["index", e(f"{kept} tasks kept ({d.store.retention:.0f}s retention, cap {d.store.max_tasks}), "
                    f"{d.ingester.ingested if d.ingester else 0} events read since start")
                  if d.store is not None else "none"],
    ], "setup"))
    out.append("</section>")
    return "".join(out)


#: The states recorded (the outcomes of attempts), drawn as stacked bars.
_COLORS = {"SUCCESS": "#2e9d4b", "FAILURE": "#d93025", "RETRY": "#f29900"}
_BARS = tuple(_COLORS)


def _chart(counts: dict[int, dict[str, int]], now_minute: int) -> str:
    """Stacked bars, one per minute, as inline SVG (presentation attributes only: the CSP forbids
    inline styles)."""
    width, height, bar = 600, 132, 10
    plot = height - 12
    top = max((sum(v for s, v in m.items() if s in _BARS) for m in counts.values()), default=0) or 1
    parts = []
    totals: dict[str, int] = {}
    for i in range(60):
        m = counts.get(now_minute - 59 + i, {})
        y = float(plot)
        for state, color in _COLORS.items():
            n = m.get(state, 0)
            totals[state] = totals.get(state, 0) + n
            if not n or state not in _BARS:
                continue
            h = n / top * (plot - 10)
            y -= h
            parts.append(f'<rect x="{i * bar}" y="{y:.1f}" width="{bar - 1}" height="{h:.1f}" fill="{color}">'
                         f"<title>{n} {state}</title></rect>")
    parts.append(f'<text x="0" y="{height - 1}" font-size="10" fill="#5f6368">60 min ago</text>'
                 f'<text x="{width - 20}" y="{height - 1}" font-size="10" fill="#5f6368">now</text>')
    legend = " ".join(f'<span class="state s-{s.lower()}">{s} {totals.get(s, 0)}</span>' for s in _COLORS)
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="events per minute">{"".join(parts)}</svg><p class="legend">{legend} '
            f"(bars: finished per minute, at most {top})</p>")


def _tasks(d: Dashboard, q: dict[str, str]) -> tuple[str, str]:
    search = q.get("q", "").strip()
    if search:
        if (d.store is not None and d.store.get(search) is not None) or backend_state(d.server.backend, search):
            raise _Redirect(f"/task/{quote(search)}")
        if backend_group(d.server.backend, search) is not None:
            raise _Redirect(f"/workflow/{quote(search)}")
        return "", f'<p class="error">No task or group {e(search)} in the event log or the result backend.</p>'
    state, name, queue = q.get("state", ""), q.get("name", ""), q.get("queue", "")
    minutes = int(q.get("minutes") or 0)
    try:
        limit = max(1, min(1000, int(q.get("limit") or 100)))
    except ValueError:
        limit = 100
    options = "".join(f'<option value="{s}"{" selected" if s == state else ""}>{s}</option>' for s in ("", *STATES))
    mins = "".join(f'<option value="{m}"{" selected" if m == minutes else ""}>{label}</option>'
                   for m, label in ((0, "any time"), (5, "5 min"), (60, "1 hour"), (1440, "1 day")))
    form = (
        '<form class="filters" method="get" action="/tasks">'
        f'<label>state <select name="state">{options}</select></label>'
        f'<label>name <input name="name" value="{e(name)}"></label>'
        f'<label>queue <input name="queue" value="{e(queue)}"></label>'
        f'<label>since <select name="minutes">{mins}</select></label><button>filter</button></form>'
    )
    if d.store is None:
        return form, "<p>This backend keeps no event log: search a task by UUID above.</p>"
    since = time.time() - minutes * 60 if minutes else 0.0
    recs = d.store.recent(limit, state=state, name=name, queue=queue, since=since)
    rows = [_task_row(r) for r in recs]
    return form, (_table(["task", "name", "state", "queue", "worker", "updated", "runtime", "retries", "workflow"],
                         rows, "tasks") if rows else "<p>No task matches.</p>")


def _task_row(r: TaskRecord) -> list[str]:
    link = f'<a href="/workflow/{e(quote(r.uuid))}">graph</a>' if r.group_uuid else ""
    return [
        f'<a href="/task/{e(quote(r.uuid))}">{e(r.uuid)}</a>', e(r.name), _badge(display_state(r.state, r.error)),
        e(r.queue), e(r.worker), e(_when(r.updated)), e(f"{r.runtime:.3f}s" if r.runtime is not None else ""),
        e(r.retries or ""), link,
    ]


def _args_table(d: Dashboard, name: str, sig: dict[str, Any]) -> str:
    if d.hidden(name):
        return "<p>(arguments hidden for this task name)</p>"
    args = sig.get("args") or []
    if not args:
        return "<p>No arguments.</p>"
    rows = [[e(i), e(a[0]), e(a[1]), f"<code>{e(json.dumps(a[2], default=repr))}</code>"] for i, a in enumerate(args)]
    return _table(["#", "name", "type", "value"], rows, "args")


def _task(d: Dashboard, uuid: str) -> str:
    t = d.task_json(uuid)
    if t is None:
        raise _HTTPError(404, f"no task {uuid} in the event log or the result backend")
    rec = d.store.get(uuid) if d.store is not None else None
    sig = signature_doc(rec)
    nxt = [n for n in (sig or {}).get("next") or () if len(n) == 3]
    back = f"/task/{quote(uuid)}"
    out = [f'<p>{_badge(t["state"])} <strong class="task-name">{e(t.get("name"))}</strong> <code>{e(uuid)}</code></p>']
    out.append(
        f'<form method="post" action="/revoke" class="revoke">{_csrf(d, back)}<input type="hidden" name="uuids" '
        f'value="{e(uuid)}"><label><input type="checkbox" name="terminate" value="1"> terminate if running</label>'
        '<button id="revoke-task">revoke task</button></form>'
    )
    fields: list[list[str]] = [["worker", e(t.get("worker", ""))], ["queue", e(t.get("queue", ""))]]
    for k in ("started", "finished"):
        fields.append([k, e(_when(t.get(k)))])
    if t.get("runtime") is not None:
        fields.append(["runtime", e(f"{t['runtime']:.4f}s")])
    fields.append(["retries", e(t.get("retries", 0))])
    if sig is not None:
        fields += [
            ["eta", e(_when(sig.get("eta")))], ["priority", e(sig.get("priority"))],
            ["retry_count left", e(sig.get("retry_count"))],
            ["headers", f"<code>{e(json.dumps(sig.get('headers') or {}, default=repr))}</code>"],
        ]
    links = []
    if t.get("group_uuid") or t.get("parent") or nxt:
        links.append(f'<a href="/workflow/{e(quote(uuid))}" id="workflow-link">workflow graph</a>')
    if t.get("parent"):
        links.append(f'previous: <a href="/task/{e(quote(t["parent"]))}">{e(t["parent"])}</a>')
    if t.get("group_uuid"):
        links.append(f'group: <a href="/workflow/{e(quote(t["group_uuid"]))}">{e(t["group_uuid"])}</a>')
    labels = {"next": "next", "error": "on error", "chord": "chord callback"}
    for child_uuid, child_name, kind in nxt:
        if child_uuid:
            links.append(f'{labels.get(kind, kind)}: <a href="/task/{e(quote(child_uuid))}">{e(child_name)}</a>')
    if links:
        fields.append(["workflow", " · ".join(links)])
    out.append(_table(["", ""], fields, "fields"))
    if sig is not None:
        out.append("<h2>Arguments</h2>" + _args_table(d, str(t.get("name", "")), sig))
    if t.get("results"):
        out.append(f'<h2>Results</h2><pre class="results">{e(t["results"])}</pre>')
    if t.get("error"):
        out.append(f'<h2>Error</h2><pre class="error">{e(t["error"])}</pre>')
    if t.get("traceback"):
        out.append(f'<h2>Traceback</h2><pre class="traceback">{e(t["traceback"])}</pre>')
    if t.get("history"):
        hist = [line.split(" ", 2) for line in str(t["history"]).splitlines() if line]
        rows = [
            [e(_when(float(h[0]))), _badge(h[1] if len(h) > 1 else ""), e(h[2] if len(h) > 2 else "")] for h in hist
        ]
        out.append("<h2>History</h2>" + _table(["time", "state", "worker"], rows, "history"))
    if rec is None:
        out.append("<p>Not in the event log: shown from the result backend only.</p>")
    return "".join(out)


def _workflow(d: Dashboard, uuid: str) -> str:
    g = build_graph(uuid, d.store, d.server.backend)
    if g is None:
        raise _HTTPError(404, f"no task or group {uuid} in the event log or the result backend")
    back = f"/workflow/{quote(uuid)}"
    return (
        f'<p><span id="graph-summary">{e(g.kind)} of {len(g.nodes)} task{"s" if len(g.nodes) != 1 else ""}'
        f'{" (cut)" if g.truncated else ""}</span> · <a href="/task/{e(quote(uuid))}">task page</a></p>'
        f'<form method="post" action="/revoke" class="revoke">{_csrf(d, back)}'
        f'<input type="hidden" name="workflow" value="{e(uuid)}"><button>revoke the whole workflow</button></form>'
        f'<div class="workflow"><div id="graph" data-workflow="{e(uuid)}"></div>'
        '<aside id="node-detail"><p>Click a node for its detail.</p></aside></div>'
    )


def _dead(d: Dashboard, q: dict[str, str]) -> str:
    from machinery import deadletters

    broker = d.server.broker
    if not type(broker).supports_dead_letters:
        return f"<p>The {e(type(broker).__name__)} broker keeps no dead letters that machinery can list.</p>"
    queue = q.get("queue") or None
    rows = []
    for letter in broker.list_dead_letters(queue)[:1000]:
        info = deadletters.describe(letter)
        link = f'/dead/{quote(letter.id)}?{urlencode({"queue": letter.queue})}'
        replay = (
            f'<form method="post" action="/dead/replay">{_csrf(d, "/dead")}<input type="hidden" name="id" '
            f'value="{e(letter.id)}"><input type="hidden" name="queue" value="{e(letter.queue)}">'
            '<button class="replay">replay</button></form>'
        )
        task = e(info["task"]) if info["task"] else f'<span class="error">{e(info["error"])}</span>'
        uuid = f'<a href="/task/{e(quote(info["uuid"]))}">{e(info["uuid"])}</a>' if info["uuid"] else ""
        rows.append([f'<a href="{e(link)}">{e(letter.id)}</a>', e(letter.queue), e(info["dead_at"] or ""),
                     e(info["deliveries"] if info["deliveries"] is not None else ""), task, uuid, replay])
    if not rows:
        return "<p>No dead letters.</p>"
    return _table(["id", "queue", "dead at", "deliveries", "task", "uuid", ""], rows, "dead")


def _dead_one(d: Dashboard, letter_id: str, queue: str | None) -> str:
    from machinery import deadletters

    letter = deadletters.find(d.server.broker, letter_id, queue)
    info = deadletters.describe(letter, full=True)
    body = info.get("body") or info.get("body_base64") or ""
    if info["task"] and d.hidden(str(info["task"])):
        body = "(hidden for this task name)"
    rows = [[e(k), e(info[k])] for k in ("id", "queue", "dead_at", "deliveries", "task", "uuid", "error")]
    return (
        _table(["", ""], rows, "fields")
        + f'<form method="post" action="/dead/replay">{_csrf(d, "/dead")}<input type="hidden" name="id" '
        f'value="{e(letter.id)}"><input type="hidden" name="queue" value="{e(letter.queue)}">'
        '<button class="replay">replay</button></form>'
        + f'<h2>Body</h2><pre class="body">{e(body)}</pre>'
    )
