"""JSON log lines: ``machinery worker --log-format json`` (or ``$MACHINERY_LOG_FORMAT=json``).

Each record becomes one JSON object on one line::

    {"timestamp": "2026-12-05T16:20:01.123456+00:00", "level": "INFO", "logger": "machinery.task",
     "message": "succeeded add task_... in 0.2ms: [3]", "task_name": "add", "task_uuid": "task_...",
     "state": "SUCCESS", "duration": 0.0002, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}

The task fields come from the ``extra`` the default logging plugin passes (``task_name``,
``task_uuid``, ``state``, ``duration``); ``trace_id`` is the record's own when a plugin set
one, else the current OpenTelemetry span's when ``opentelemetry`` is in use. Credentials in
any URL of the message or traceback are redacted (:func:`machinery.config.redact_url`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from machinery.config import redact_url

__all__ = ["LOG_FORMATS", "JsonFormatter", "TEXT_FORMAT"]

#: The ``--log-format`` choices.
LOG_FORMATS = ("text", "json")
#: The text format of ``machinery`` commands.
TEXT_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"

#: Record attributes copied into the JSON object when present (set through ``extra=``).
TASK_FIELDS = ("task_name", "task_uuid", "state", "duration", "consumer_tag", "queue", "trace_id", "span_id")


def _current_trace_id() -> str | None:
    # Only when the application already uses OpenTelemetry: never imported from here.
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}"


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line, URLs redacted."""
        out: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_url(record.getMessage()),
        }
        for name in TASK_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if "trace_id" not in out:
            trace_id = _current_trace_id()
            if trace_id is not None:
                out["trace_id"] = trace_id
        if record.exc_info:
            out["exception"] = redact_url(self.formatException(record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(level: str | int, fmt: str = "text", stream: object = None) -> None:
    """Set up the root logger for a ``machinery`` command.

    :param level: a level name or number.
    :param fmt: ``"text"`` or ``"json"``.
    :param stream: where to write (default ``sys.stderr``).
    :raises ValueError: an unknown format.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else getattr(logging, level.upper()))
