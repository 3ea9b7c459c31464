"""The one log pipeline: structlog and the standard library through the same processors.

callhub logs with structlog (event names `area.event`); aiohttp, SQLAlchemy,
asyncpg and panoramisk log through the standard `logging` module. Both end
in one handler whose `structlog.stdlib.ProcessorFormatter` adds the same
timestamp and level and renders them alike: one JSON object per line off a
terminal, readable console lines on one. Library records keep their text
as `event` and name their `logger`. Libraries speak from WARNING up
(their INFO chatter is not callhub's); callhub at the configured level.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

LIBRARY_LEVEL = logging.WARNING


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
    renderer: Any = (structlog.processors.JSONRenderer(ensure_ascii=False) if json
                     else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, LIBRARY_LEVEL))
    logging.getLogger("callhub").setLevel(numeric)


def mask_number(number: str | None) -> str | None:
    """Keep the last 4 digits of a phone number for info logs: personal data stays out."""
    if not number:
        return number
    return "*" * max(len(number) - 4, 0) + number[-4:]
