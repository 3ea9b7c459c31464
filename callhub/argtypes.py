"""argparse types for the commands' numbers: a bad one is argparse's one-line usage error,
never a traceback or a daemon that starts and then stops (or hangs) on it. Also the
options several commands share, and how their summaries count (`count`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from callhub.config.values import async_database_url

# The years of the times callhub takes (API parameters, report dates, backfill windows,
# rota show): a period, window or shift change at year 9999's end overflowed a datetime
# (a traceback), and no call of callhub's is older than 1900.
FIRST_YEAR, LAST_YEAR = 1900, 9998
YEARS = f"the year must be {FIRST_YEAR} to {LAST_YEAR}"


def in_years(year: int) -> bool:
    return FIRST_YEAR <= year <= LAST_YEAR


def count(n: int, noun: str) -> str:
    """`1 line`, `2 lines`, `0 lines`: the commands' summaries said `1 lines`, `1 calls`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def whole(lowest: int, highest: int) -> Callable[[str], int]:
    """A whole number from `lowest` to `highest`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not lowest <= value <= highest:
            raise argparse.ArgumentTypeError(f"must be {lowest} to {highest:,}, got {text!r}")
        return value
    return parse


def above_zero(highest: float) -> Callable[[str], float]:
    """A number above 0 and at most `highest` (NaN and infinity are neither)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not 0 < value <= highest:
            raise argparse.ArgumentTypeError(f"must be above 0 and at most {highest:,}, "
                                             f"got {text!r}")
        return value
    return parse


def not_empty(text: str) -> str:
    """A name an option gives: an empty one is refused, as the config refuses an empty key;
    `backfill --cel-table ""` read the table `cel`, `--pbx ""` took the config's only PBX."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (leave it out for the default)")
    return text


def database_url(text: str) -> str:
    """A database URL given on the command line, judged as `database_url` in the config file
    or `$CALLHUB_DATABASE_URL` is (on callhub's async driver; the same words, which never
    repeat the URL's parts): a URL those refused with exit 2 was an 'ArgumentError' at the
    first connect (exit 1), or a traceback. An empty one is refused too: it fell back
    silently to the configured database."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (leave the option out for the "
                                         "configured one)")
    try:
        async_database_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text  # as given: the commands' messages name it so (Database.connect converts it)


def add_database_url(parser: argparse.ArgumentParser) -> None:
    """`--database-url URL`, as every command that reads or writes the calls takes it."""
    parser.add_argument("--database-url", metavar="URL", type=database_url,
                        help="override database_url / $CALLHUB_DATABASE_URL")
