"""One database job from a command line (db upgrade, report): errors as one line, not a trace.

Only `callhub db upgrade` may create a SQLite database: connecting creates the file
(callhub.store.db, as `callhub run` wants), so every other command checks first that
it is there, rather than leave an empty file behind a typo in the path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from callhub.config import mask_url
from callhub.config.values import async_database_url
from callhub.store.db import settle_sqlite_workers
from callhub.store.failures import explain, sqlstate
from callhub.store.migrate import SchemaError

T = TypeVar("T")


def missing_sqlite_file(url: str) -> str | None:
    """The absolute path of the file a SQLite URL names when there is no such file (None:
    it is there, in memory, a `file:` URI, not SQLite, or a URL callhub does not run on:
    connecting says)."""
    with contextlib.suppress(ArgumentError, ValueError):
        parsed = make_url(async_database_url(url))
        path = parsed.database
        if (parsed.get_backend_name() == "sqlite" and path and path != ":memory:"
                and not path.startswith("file:") and not os.path.exists(path)):
            return os.path.abspath(path)
    return None


def does_not_exist(url: str, path: str,
                   hint: str = " (`callhub db upgrade` creates it)") -> str:
    """The one line saying a SQLite database is not there (`hint`: what creates it)."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):  # which `callhub db upgrade` does not make either
        hint = f" (the directory {directory} does not exist)"
    return f"database {mask_url(url)} does not exist: no file {path}{hint}"


def other_schema(exc: BaseException) -> str:
    """What a column callhub's query names but the database lacks means: its schema is
    another callhub's, most often an older one (a report said only "no such column:
    calls.resolution"). Only here, about callhub's own database: a CEL table is not."""
    reason = str(getattr(exc, "orig", None) or exc)
    if sqlstate(exc) != "42703" and not reason.startswith("no such column"):
        return ""
    return (" (the database's schema is not this callhub's: `callhub db current` says "
            "which revision it is at, `callhub db upgrade` brings an older one up)")


def run_db(url: str, job: Callable[[], Coroutine[Any, Any, T]], *,
           may_create: bool = False) -> tuple[bool, T | None]:
    """Run `job`; a database error is printed as one line (no traceback) and gives False.
    Unless `may_create`, a SQLite database whose file is not there is such an error, and
    no file is created."""
    if not may_create and (path := missing_sqlite_file(url)) is not None:
        print(f"callhub: {does_not_exist(url, path)}", file=sys.stderr)
        return False, None

    async def settled() -> T:
        try:
            return await job()
        except BaseException:
            await settle_sqlite_workers()  # no thread may outlive the loop it reports to
            raise

    try:
        return True, asyncio.run(settled())
    except (SQLAlchemyError, OSError, ArgumentError) as exc:
        print(f"callhub: {explain(url, exc)}{other_schema(exc)}", file=sys.stderr)
        return False, None
    except SchemaError as exc:
        print(f"callhub: database {mask_url(url)}: {exc}", file=sys.stderr)
        return False, None
