"""Settings written as text: durations ("1d12h"), listen addresses ("host:port"), database URLs.

Each parser raises a pydantic custom error (so a model names the key), and has
a `parse_*` twin that takes the key itself and raises `ConfigError`, for
callers outside a model (the API, the CLI's options).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic_core import PydanticCustomError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from callhub.config.problems import ConfigError, problem

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
# Query parameters of a database URL that carry a secret (libpq's password, sslpassword, ...).
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)


def duration(value: Any) -> float:
    """'24h', '2d', '90m', '1d12h' to seconds."""
    text = value.strip() if isinstance(value, str) else ""
    if not text or _DURATION.sub("", text) or not _DURATION.search(text):
        raise problem(f"expected a duration such as '24h', '2d' or '30m', got {value!r}")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(text))
    if seconds <= 0:
        raise problem(f"must be longer than 0, got {value!r}")
    return seconds


def listen(value: Any) -> tuple[str, int]:
    """'host:port' to a tuple (a tuple is taken as it is)."""
    if isinstance(value, tuple):
        return value
    if not isinstance(value, str) or ":" not in value:
        raise problem(f"expected 'host:port', got {value!r}")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise problem(f"port must be a number, got {port_text!r}") from None
    if not host or not 0 <= port <= 65535:
        raise problem(f"expected 'host:port' with a port 0-65535, got {value!r}")
    return host, port


# The async driver callhub runs each database on. A URL without a driver, as libpq and
# most tools write one ("postgresql://..."), means this one; SQLAlchemy's default for it
# (psycopg2, pysqlite) is not installed, or not async: a traceback at the first connect.
ASYNC_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}
DIALECT_ALIASES = {"postgres": "postgresql"}


def async_database_url(url: str) -> str:
    """`url` on callhub's async driver (`postgresql://` and `postgres://` become
    `postgresql+asyncpg://`, `sqlite://` becomes `sqlite+aiosqlite://`); ValueError for any
    other database or driver, saying what is taken."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("expected a SQLAlchemy URL such as "
                         "'postgresql+asyncpg://user:password@host/callhub'")
    dialect, _, driver = scheme.lower().partition("+")
    dialect = DIALECT_ALIASES.get(dialect, dialect)
    wanted = ASYNC_DRIVERS.get(dialect)
    if wanted is None or driver not in ("", wanted):
        raise ValueError(f"callhub runs on PostgreSQL ('postgresql+asyncpg://...') or SQLite "
                         f"('sqlite+aiosqlite:///...'), got {scheme + '://'!r}")
    converted = f"{dialect}+{wanted}://{rest}"
    # Mistakes that would otherwise wait for a host that does not exist: the messages
    # never repeat the URL's parts, which may hold the password.
    try:
        parsed = make_url(converted)
    except (ArgumentError, ValueError):
        raise ValueError("the URL cannot be read (the port must be a number; "
                         "URL-encode special characters in the user and password)") from None
    if parsed.host is not None and "@" in parsed.host:
        raise ValueError("an '@' in the user name or password must be URL-encoded as %40")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ValueError(f"the port must be 1-65535, got {parsed.port}")
    return converted


def database_url(value: Any) -> str:
    """`async_database_url` as a model's validator."""
    try:
        return async_database_url(value)
    except ValueError as exc:
        raise problem(str(exc)) from None


def _with_key(parse: Any, value: Any, key: str) -> Any:
    try:
        return parse(value)
    except PydanticCustomError as exc:
        raise ConfigError(f"{key}: {exc.message()}") from None


def parse_duration(value: Any, key: str) -> float:
    """`duration` for callers outside a model; the key names the setting in errors."""
    seconds: float = _with_key(duration, value, key)
    return seconds


def parse_listen(value: Any, key: str) -> tuple[str, int]:
    """`listen` for callers outside a model; the key names the setting in errors."""
    address: tuple[str, int] = _with_key(listen, value, key)
    return address


def mask_url(url: str) -> str:
    """Hide the password in a database URL: in its user part and in its query string."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, qmark, query = rest.partition("?")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        rest = f"{user}:***@{host}" if ":" in creds else rest
    if qmark:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs],
                          safe="*/:")
    return f"{scheme}://{rest}{qmark}{query}"


def time_zone(value: str) -> str:
    """An IANA time zone's name, checked; a PydanticCustomError naming it otherwise. A
    folder of the tz database ("America") fails inside ZoneInfo as an OSError, not as
    ZoneInfoNotFoundError: it is as unknown."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise problem(f"unknown time zone {value!r}") from None
    return value
