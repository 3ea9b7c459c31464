"""Report periods: the day, the week (Monday first) or the month containing a date.

A period is a span of local dates; its bounds are local midnights in the
configured time zone, so a day across a DST change is 23 or 25 hours long and
the figures still cover exactly the local calendar days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

KINDS = ("day", "week", "month")


@dataclass(frozen=True, slots=True)
class Period:
    """Local dates [first, end): `end` is the first day after the period."""

    kind: str
    first: date
    end: date

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range((self.end - self.first).days)]

    @property
    def last(self) -> date:
        return self.end - timedelta(days=1)

    def bounds(self, tz: tzinfo) -> tuple[datetime, datetime]:
        """The period's start and end as aware datetimes (local midnights)."""
        return (datetime.combine(self.first, time(), tzinfo=tz),
                datetime.combine(self.end, time(), tzinfo=tz))

    def previous(self) -> Period:
        return period_containing(self.kind, self.first - timedelta(days=1))

    def label(self) -> str:
        if self.kind == "day":
            return self.first.isoformat()
        if self.kind == "month":
            return self.first.strftime("%Y-%m")
        return f"{self.first.isoformat()} – {self.last.isoformat()}"


def _next_month(day: date) -> date:
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def period_containing(kind: str, day: date) -> Period:
    """The `kind` period holding `day` (a week runs Monday to Sunday)."""
    if kind == "day":
        return Period(kind, day, day + timedelta(days=1))
    if kind == "week":
        monday = day - timedelta(days=day.weekday())
        return Period(kind, monday, monday + timedelta(days=7))
    if kind == "month":
        first = day.replace(day=1)
        return Period(kind, first, _next_month(first))
    raise ValueError(f"period: expected one of {', '.join(KINDS)}, got {kind!r}")


def last_ended(kind: str, now: datetime, tz: tzinfo) -> Period:
    """The latest `kind` period that has ended by `now` (local time in `tz`)."""
    return period_containing(kind, now.astimezone(tz).date()).previous()
