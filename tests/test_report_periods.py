"""Report periods and the mail's due times: week boundaries, month lengths, time zones."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callhub.config import Settings
from callhub.config.report import ReportSettings, SmtpSettings
from callhub.report.mailer import due_period, next_due
from callhub.report.periods import last_ended, period_containing

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)))
def test_a_week_runs_monday_to_sunday_and_holds_the_day(day: date) -> None:
    week = period_containing("week", day)
    assert week.first.weekday() == 0 and week.last.weekday() == 6
    assert week.first <= day <= week.last and len(week.days) == 7
    assert week.previous().end == week.first


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)))
def test_a_month_is_its_calendar_days(day: date) -> None:
    month = period_containing("month", day)
    assert month.first == day.replace(day=1)
    assert month.end.day == 1 and (month.end - timedelta(days=1)).month == day.month
    assert all(d.month == day.month for d in month.days)
    assert month.previous().end == month.first


@pytest.mark.parametrize(("day", "length"), [
    (date(2026, 2, 14), 28), (date(2024, 2, 29), 29), (date(2100, 2, 1), 28),
    (date(2000, 2, 1), 29), (date(2026, 12, 31), 31), (date(2026, 4, 30), 30)])
def test_month_lengths(day: date, length: int) -> None:
    assert len(period_containing("month", day).days) == length


def test_week_boundaries_across_a_year_and_the_label() -> None:
    week = period_containing("week", date(2027, 1, 1))  # a Friday
    assert (week.first, week.last) == (date(2026, 12, 28), date(2027, 1, 3))
    assert week.label() == "2026-12-28 – 2027-01-03"
    assert period_containing("week", date(2026, 11, 30)).first == date(2026, 11, 30)
    with pytest.raises(ValueError, match="period"):
        period_containing("year", date(2026, 1, 1))


def test_bounds_are_local_midnights_and_follow_dst() -> None:
    # New York's clocks go back on 2026-11-01: that day is 25 hours, the week 7 days + 1 h.
    day = period_containing("day", date(2026, 11, 1))
    start, end = day.bounds(NEW_YORK)
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=25)
    week = period_containing("week", date(2026, 11, 1))
    s, e = week.bounds(NEW_YORK)
    assert e.astimezone(UTC) - s.astimezone(UTC) == timedelta(days=7, hours=1)
    assert s.astimezone(UTC) == datetime(2026, 10, 26, 4, 0, tzinfo=UTC)


def test_the_period_just_ended_depends_on_the_zone() -> None:
    # 2026-11-29 20:00 UTC is already Monday 04:00 in Shanghai but still Sunday in UTC.
    now = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)
    assert last_ended("week", now, SHANGHAI).first == date(2026, 11, 23)
    assert last_ended("week", now, UTC).first == date(2026, 11, 16)
    assert last_ended("day", now, SHANGHAI).first == date(2026, 11, 29)
    assert last_ended("month", datetime(2026, 3, 1, 0, 30, tzinfo=SHANGHAI), SHANGHAI).first \
        == date(2026, 2, 1)


def weekly(send_at: str = "08:00", schedule: str = "weekly") -> Settings:
    smtp = SmtpSettings(host="127.0.0.1", from_address="callhub@example.com")
    return replace(Settings(), timezone="Asia/Shanghai", report=ReportSettings(
        schedule=schedule, send_at=send_at, recipients=("a@example.com",), smtp=smtp))


def test_the_mail_falls_due_at_send_at_on_the_day_after_the_period() -> None:
    settings = weekly("08:00")
    before = datetime(2026, 11, 30, 7, 59, tzinfo=SHANGHAI)
    at = datetime(2026, 11, 30, 8, 0, tzinfo=SHANGHAI)
    # Before 08:00 on Monday the due mail is still the week before last.
    assert due_period(settings, before).first == date(2026, 11, 16)  # type: ignore[union-attr]
    assert due_period(settings, at).first == date(2026, 11, 23)  # type: ignore[union-attr]
    assert next_due(settings, before) == at
    assert next_due(settings, at) == datetime(2026, 12, 7, 8, 0, tzinfo=SHANGHAI)
    monthly = weekly("00:00", "monthly")
    assert next_due(monthly, datetime(2027, 1, 15, tzinfo=SHANGHAI)) == \
        datetime(2027, 2, 1, tzinfo=SHANGHAI)
    assert due_period(replace(settings, report=ReportSettings()), at) is None
