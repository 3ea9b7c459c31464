"""One database job from a command line (db upgrade, report): errors as one line, not a trace."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from callhub.config import mask_url
from callhub.store.db import settle_sqlite_workers
from callhub.store.failures import explain
from callhub.store.migrate import SchemaError

T = TypeVar("T")


def run_db(url: str, job: Callable[[], Coroutine[Any, Any, T]]) -> tuple[bool, T | None]:
    """Run `job`; a database error is printed as one line (no traceback) and gives False."""
    async def settled() -> T:
        try:
            return await job()
        except BaseException:
            await settle_sqlite_workers()  # no thread may outlive the loop it reports to
            raise

    try:
        return True, asyncio.run(settled())
    except (SQLAlchemyError, OSError, ArgumentError) as exc:
        print(f"callhub: {explain(url, exc)}", file=sys.stderr)
        return False, None
    except SchemaError as exc:
        print(f"callhub: database {mask_url(url)}: {exc}", file=sys.stderr)
        return False, None
