"""The one log pipeline: structlog and the standard library through the same processors.

callhub logs with structlog (event names `area.event`); aiohttp, SQLAlchemy,
asyncpg and panoramisk log through the standard `logging` module. Both end
on one stream with the same timestamp and level, rendered alike: one JSON
object per line off a terminal, readable console lines on one. Library
records keep their text as `event` and name their `logger`. Libraries speak
from WARNING up (their INFO chatter is not callhub's); callhub at the
configured level.

callhub's own events are rendered by structlog and written straight to the
stream, not handed to `logging` as records: a line per routed or stored call
is written thousands of times a second, and the detour through a `LogRecord`
and `ProcessorFormatter` cost ~21 µs a line against ~7.5 µs (`bench/README.md`).
Both write under the handler's lock, so their lines never interleave.
"""

from __future__ import annotations

import json as stdlib_json
import logging
import sys
from typing import Any, TextIO

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

LIBRARY_LEVEL = logging.WARNING
HTTP_FAULT_FIELDS = ("http_status", "http_error", "http_client")


def render_json(event: dict[str, Any], **_: Any) -> str:
    """One JSON line, by orjson; what orjson cannot encode (an int past 64 bits) by json."""
    try:
        return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return stdlib_json.dumps(event, default=repr, ensure_ascii=False, separators=(",", ":"))


class LineWriter:
    """structlog's logger: writes each rendered line to the handler's stream under its lock."""

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self.handler = handler

    def msg(self, line: str) -> None:
        """Write one line and flush it, as the handler does for a record."""
        handler = self.handler
        handler.acquire()
        try:
            handler.stream.write(line + "\n")
            handler.stream.flush()
        finally:
            handler.release()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class ClientFaultsAsWarnings(logging.Filter):
    """aiohttp logs a malformed request (a URL past 8 KiB, a broken header) at error, with a
    traceback and the request's first bytes, which may carry a caller's number. It is the
    client's fault, not callhub's: one warning, `api.bad_http_request`, without them."""

    def filter(self, record: logging.LogRecord) -> bool:
        fault = record.exc_info[1] if record.exc_info else None
        if isinstance(fault, HttpProcessingError) and 400 <= fault.code < 500:
            client = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "api.bad_http_request", ()
            record.exc_info, record.exc_text = None, None
            record.http_status, record.http_error = fault.code, type(fault).__name__
            record.http_client = client
        return True


def configure_logging(level: str = "info", stream: TextIO | None = None,
                      json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger to write one format to `stream`."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.processors.JSONRenderer(serializer=render_json) if json
                     else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name,
                           structlog.stdlib.ExtraAdder(allow=HTTP_FAULT_FIELDS)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    writer = LineWriter(handler)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, LIBRARY_LEVEL))
    server = logging.getLogger("aiohttp.server")
    for old_filter in server.filters[:]:
        if isinstance(old_filter, ClientFaultsAsWarnings):
            server.removeFilter(old_filter)
    server.addFilter(ClientFaultsAsWarnings())
    logging.getLogger("callhub").setLevel(numeric)


def mask_number(number: str | None) -> str | None:
    """Keep the last 4 digits of a phone number for info logs: personal data stays out."""
    if not number:
        return number
    return "*" * max(len(number) - 4, 0) + number[-4:]
