"""Is a failed write the database's fault (an outage: retry) or the data's (split, quarantine)?

An outage (connection refused or dropped, login refused, a timeout, a locked
SQLite file, the server shutting down, a server taking no writes) passes:
the same batch is retried with backoff, forever. A data error (a value too
long, a NUL byte, a number out of range, a constraint violated, a value
Python cannot bind) is about some record of the batch: retrying it changes
nothing, so the batch is split to find that record. Anything else is
`unknown`: the writer asks the database (a ping) whether it is up before
blaming the data.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from callhub.config import mask_url

Kind = Literal["outage", "data", "unknown"]

# SQLSTATE classes (PostgreSQL, first two characters).
DATA_CLASSES = ("22", "23")  # data exception, integrity constraint violation
OUTAGE_CLASSES = ("08", "28", "3D", "40", "53", "55", "57", "58", "XX")
# connection, authorization, no such database, rollback (deadlock, serialization),
# insufficient resources, lock not available, operator intervention (shutdown),
# system error, internal error
# States of a database that cannot take this callhub's writes at all, whatever the call:
# read_only_sql_transaction (a hot standby after a failover, a read-only database),
# insufficient_privilege (a migration run as another role, a revoked grant), no such
# table, column or schema (a newer callhub's migration while this one still runs).
# Splitting would end in quarantining every call; waiting keeps them in the spool.
OUTAGE_STATES = ("25006", "42501", "42P01", "42703", "3F000")


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (asyncpg and psycopg both carry one)."""
    for err in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        code = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def classify(exc: BaseException) -> Kind:
    """`outage`, `data` or `unknown` for an exception raised while writing a batch."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return "outage"
    code = sqlstate(exc)
    if code is not None:
        if code[:2] in DATA_CLASSES:
            return "data"
        if code[:2] in OUTAGE_CLASSES or code in OUTAGE_STATES:
            return "outage"
    if isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError)):
        return "data"
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError,
                        sa_exc.DisconnectionError, sa_exc.TimeoutError, OSError, TimeoutError,
                        ConnectionError)):
        return "outage"
    if isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError):
        return "data"  # a value SQLAlchemy could not bind (e.g. a naive datetime)
    if isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, ValueError):
        # asyncpg itself, on the writer's COPY path (not wrapped by SQLAlchemy): above all
        # "connection is closed", a statement after the network dropped the connection
        # between two of a batch. Unknown, the database answering the ping a moment later
        # (a flapping link) blamed the data: the batch was split and its calls quarantined.
        # (asyncpg's DataError, a value it cannot encode, is a ValueError: the data's.)
        return "outage"
    if isinstance(exc, (ValueError, TypeError, OverflowError, UnicodeError, KeyError)):
        return "data"  # a record Python could not turn into rows
    return "unknown"


def unreachable(exc: BaseException) -> bool:
    """The database server could not be reached: not running, still starting up (57P03),
    the network. Worth waiting for; a refused login or a missing database is not."""
    for err in (exc, getattr(exc, "orig", None), exc.__cause__):
        if isinstance(err, OSError):  # refused, unreachable, timed out, no such host yet
            return True
    code = sqlstate(exc)
    return code is not None and (code[:2] == "08" or code == "57P03")


def explain(url: str, exc: BaseException) -> str:
    """One line for a database error met by a command or at start: the database (password
    masked), the error, and what to do where callhub can tell."""
    reason = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0]
    if sqlstate(exc) == "42P01" or reason.startswith("no such table"):
        reason += " (callhub's tables are not there: `callhub db upgrade` creates them)"
    with contextlib.suppress(sa_exc.ArgumentError):
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            directory = Path(parsed.database).parent
            if not directory.is_dir():
                reason += f" (the directory {directory} does not exist)"
    return f"database {mask_url(url)}: {type(exc).__name__}: {reason}"


def describe(exc: BaseException) -> str:
    """The error's type and the first line of its message (no parameters: they hold
    personal data), for logs and the quarantine."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:500] if first else type(exc).__name__
