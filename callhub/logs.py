"""structlog set-up, in one place: JSON lines off a terminal, readable console output on one."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def configure_logging(level: str = "info", stream: TextIO | None = None,
                      json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger (libraries log through it)."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.processors.JSONRenderer(ensure_ascii=False) if json
                     else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=stream,
                        format="%(levelname)s %(name)s: %(message)s", force=True)


def mask_number(number: str | None) -> str | None:
    """Keep the last 4 digits of a phone number for info logs: personal data stays out."""
    if not number:
        return number
    return "*" * max(len(number) - 4, 0) + number[-4:]
