"""Log lines: readable text (the default) or, with ``LOG_FORMAT=json``, one JSON object a line.

A text line is ``[time: LEVEL/logger] message``, secrets redacted as in JSON lines; the
worker and beat print Celery's own text lines, the web process gets ``use_text``.

A JSON line holds ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``service`` (web, worker,
beat), ``message``, and where they apply ``chain_id``, ``step``, ``task_id`` (the provider's
task), ``video_id`` and ``event`` (a stable name such as ``step.created``), given with
``extra=`` at the call. A record made while a Celery task runs also carries ``celery_task``
and ``celery_task_id``, an HTTP access line ``method``, ``path`` and ``status``, and a
record with an exception its traceback as ``exc``.

Secrets never reach a JSON line: ``redact`` replaces callback tokens in paths, whole query
strings of URLs and paths (where signed URLs keep their signatures), bearer tokens, JWTs and
``token=``/``signature=``/``sig=``/``expires=``-style values, in the message and traceback.

Only the standard library: the web, worker and beat processes set it up at start-up
(``webhook.app``, ``worker.celery``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

FIELDS = ("chain_id", "step", "task_id", "video_id", "event")
"""Fields taken from a record's ``extra=`` when present."""

REDACTED = "<redacted>"

_CALLBACK_TOKEN = re.compile(r"(/callbacks/(?:archive/[^/\s]+|[^/\s]+/[^/\s]+)/)[^/?#\s\"'<>]+")
_QUERY = re.compile(r"((?:[a-zA-Z][a-zA-Z0-9+.-]*://|/)[^\s?\"'<>]*)\?[^\s\"'<>#]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SECRET_VALUE = re.compile(
    r"(?i)\b((?:x-amz-)?(?:signature|credential|security-token)|sig|token|access_token|"
    r"api[_-]?key|secret|password|expires)=[^\s&\"'<>]+"
)


_BEARER_WORD = re.compile(r"(?i)bearer")


def redact(text: str) -> str:
    """``text`` with callback tokens, query strings and other secrets replaced.

    Each pattern runs only on a text holding the literal it cannot match without: most
    lines hold no secret, and the five patterns cost ~20 µs a line where a web callback
    costs ~500 µs in all.
    """
    if "?" in text:
        text = _QUERY.sub(rf"\1?{REDACTED}", text)
    if "/callbacks/" in text:
        text = _CALLBACK_TOKEN.sub(r"\1<token>", text)
    if _BEARER_WORD.search(text):
        text = _BEARER.sub(rf"\1{REDACTED}", text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if "=" in text:
        text = _SECRET_VALUE.sub(rf"\1={REDACTED}", text)
    return text


Context = Callable[[], Mapping[str, Any]]
"""Fields of the moment (e.g. the Celery task running), added to every record."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, secrets redacted."""

    def __init__(self, service: str, context: Context | None = None) -> None:
        super().__init__()
        self.service = service
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "message": redact(record.getMessage()),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value if isinstance(value, int | float) else redact(str(value))
        line.update(_access_fields(record))
        if self.context is not None:
            for name, value in self.context().items():
                line.setdefault(name, value)
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``[time: LEVEL/logger] message``, secrets redacted (the traceback too)."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s: %(levelname)s/%(name)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def use_text(level: int = logging.INFO) -> None:
    """Give the root logger a text handler on stderr (at ``level``) when it has none.

    Without it, records of this service's own loggers below WARNING are dropped and
    warnings come out bare: uvicorn sets up its own loggers only. A root logger that already
    has a handler (``--log-config``, a test runner) is left as it is.
    """
    handler = _stderr_on_root(level)
    if handler is None:
        return
    handler.setFormatter(TextFormatter())
    logging.captureWarnings(True)


def _stderr_on_root(level: int) -> logging.Handler | None:
    """The handler on stderr (at ``level``) given to a root logger that has none, or None."""
    root = logging.getLogger()
    if root.handlers:
        return None
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def _access_fields(record: logging.LogRecord) -> dict[str, Any]:
    """uvicorn's access line ``client - "METHOD PATH HTTP/x" status`` as fields."""
    args = record.args
    if record.name != "uvicorn.access" or not isinstance(args, tuple) or len(args) != 5:
        return {}
    _, method, path, _, status = args
    return {"event": "http.request", "method": method, "path": redact(str(path)), "status": status}


def json_line(service: str, message: str, *, level: str = "INFO", logger: str = "") -> str:
    """A JSON line made without a record, for text a library prints itself."""
    record = logging.LogRecord(logger, logging.getLevelName(level), "", 0, message, None, None)
    return JsonFormatter(service).format(record)


def use_json(
    service: str,
    *,
    loggers: Iterable[str] = (),
    context: Context | None = None,
    level: int = logging.INFO,
    replace: bool = True,
) -> JsonFormatter:
    """Make every handler of the root logger and of ``loggers`` write JSON lines.

    The root logger gets a handler on stderr (at ``level``) when it has none, so records of
    this service's own loggers are written too; warnings go through logging. ``replace``
    false: a handler that already writes JSON keeps its formatter (and ``service``), as in
    the web process, which imports the Celery app only to send tasks.
    """
    formatter = JsonFormatter(service, context)
    _stderr_on_root(level)
    root = logging.getLogger()
    for logger in (root, *(logging.getLogger(name) for name in loggers)):
        for handler in logger.handlers:
            if replace or not isinstance(handler.formatter, JsonFormatter):
                handler.setFormatter(formatter)
    logging.captureWarnings(True)
    return formatter
