"""`callhub report`: the day's figures per line and agent, the same numbers as GET /stats."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from desk_fixtures import SHANGHAI, Desk, day_of_calls
from store_fixtures import auth, make_call, store

from callhub.cli import main
from callhub.config import Settings
from callhub.report import build_report, parse_day
from callhub.store import migrate
from callhub.store.db import Database

DAY = datetime(2026, 11, 29, tzinfo=SHANGHAI)


def around_the_day() -> list[Any]:
    """The day's calls plus calls just outside it (local midnight either side)."""
    start = DAY.timestamp()
    return [*day_of_calls(DAY),
            make_call("before", at=start - 1, outcome="missed", caller_number="+8613000000001"),
            make_call("after", at=start + 86400, caller_number="+8613000000002"),
            make_call("short", at=start + 3600, outcome="abandoned", short_abandon=True,
                      ring_seconds=2.0, rings=1, caller_number="+8613000000003")]


async def test_the_report_has_the_numbers_of_stats_per_line_and_agent(desk: Desk) -> None:
    records = around_the_day()
    await store(desk.db, desk.settings, *records)
    report = await build_report(desk.db, desk.settings, DAY.date())
    for group_by, key in ((None, "totals"), ("line", "lines"), ("agent", "agents")):
        params = {"from": "2026-11-29"} | ({"group_by": group_by} if group_by else {})
        response = await desk.client.get("/api/v1/stats", params=params, headers=auth("viewer"))
        body = await response.json()
        assert report[key] == (body["totals"] if group_by is None else body["groups"]), key
    # And the numbers are the day's: counted here from the records themselves.
    start, end = DAY.timestamp(), DAY.timestamp() + 86400
    inbound = [r for r in records if r.direction == "inbound" and start <= r.arrived_at < end]
    counted = [r for r in inbound if not r.short_abandon]
    totals = report["totals"]
    assert totals["inbound"] == len(counted) and totals["short_abandons"] == 1
    assert totals["answered"] == sum(r.outcome == "answered" for r in counted)
    assert totals["missed"] == sum(r.outcome == "missed" for r in counted)
    assert totals["answered_within_rings"] == sum(
        r.outcome == "answered" and r.rings <= 3 for r in counted)
    by_line = {g["key"]: g for g in report["lines"]}
    assert by_line["repairs"]["inbound"] == sum(r.line == "repairs" for r in counted)
    by_agent = {g["key"]: g for g in report["agents"]}
    assert by_agent["PJSIP/1001"]["agent_name"] == "李娜"
    assert by_agent["PJSIP/1001"]["outbound"] == 1
    assert report["date"] == "2026-11-29" and report["from"] == "2026-11-29T00:00:00+08:00"


def seed_file(tmp_path: Path, settings: Settings) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'report.db'}"

    async def seed() -> dict[str, Any]:
        db = Database.connect(url)
        try:
            await migrate.upgrade(db)
            await store(db, settings, *around_the_day())
            return await build_report(db, settings, DAY.date())
        finally:
            await db.close()

    expected = asyncio.run(seed())
    (tmp_path / "expected.json").write_text(json.dumps(expected, ensure_ascii=False))
    return url


@pytest.fixture
def report_db(tmp_path: Path) -> tuple[Path, str, dict[str, Any]]:
    config = tmp_path / "callhub.toml"
    config.write_text('timezone = "Asia/Shanghai"\n', encoding="utf-8")
    settings = replace(Settings(), timezone="Asia/Shanghai", spool_dir=str(tmp_path / "spool"))
    url = seed_file(tmp_path, settings)
    expected = json.loads((tmp_path / "expected.json").read_text())
    return config, url, expected


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_command_prints_json_csv_and_text(
        report_db: tuple[Path, str, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    config, url, expected = report_db
    common = ("--config", str(config), "report", "--date", "2026-11-29", "--database-url", url)
    code, out, _ = run(capsys, *common, "--format", "json")
    assert code == 0 and json.loads(out) == expected

    code, out, _ = run(capsys, *common, "--format", "csv")
    assert out.startswith("\ufeff"), "Excel needs the BOM to read UTF-8 names"
    rows = list(csv.DictReader(io.StringIO(out[1:])))
    assert code == 0
    assert [r["scope"] for r in rows] == (
        ["day"] + ["line"] * len(expected["lines"]) + ["agent"] * len(expected["agents"]))
    assert int(rows[0]["inbound"]) == expected["totals"]["inbound"]
    assert float(rows[0]["answer_rate"]) == expected["totals"]["answer_rate"]
    for row, group in zip(rows[1:], expected["lines"] + expected["agents"], strict=True):
        assert row["key"] == (group["key"] or "")
        assert int(row["answered"]) == group["answered"]
        assert row["pending_callbacks"] == str(group["pending_callbacks"])

    code, out, _ = run(capsys, *common)
    totals = expected["totals"]
    assert code == 0 and "callhub daily report 2026-11-29 (Asia/Shanghai)" in out
    assert f"{totals['answer_rate'] * 100:.1f} %" in out
    assert f"{totals['within_rings_rate'] * 100:.1f} %" in out
    assert "repairs" in out and "李娜 (PJSIP/1001)" in out
    inbound_line = next(line for line in out.splitlines() if line.startswith("Inbound calls"))
    assert inbound_line.split()[-1] == str(totals["inbound"])


def test_a_week_s_or_a_month_s_csv_names_its_period_in_the_totals_row(
        report_db: tuple[Path, str, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    config, url, _ = report_db
    for period, first in (("day", "2026-11-29"), ("week", "2026-11-23"),
                          ("month", "2026-11-01")):
        common = ("--config", str(config), "report", "--date", "2026-11-29", "--period", period,
                  "--database-url", url)
        code, out, _ = run(capsys, *common, "--format", "json")
        assert code == 0
        totals = json.loads(out)["totals"]
        code, out, _ = run(capsys, *common, "--format", "csv")
        rows = list(csv.DictReader(io.StringIO(out[1:])))
        assert code == 0 and (rows[0]["date"], rows[0]["scope"]) == (first, period)
        assert int(rows[0]["inbound"]) == totals["inbound"] > 0
        assert {r["scope"] for r in rows[1:]} == {"line", "agent"}


def test_bad_dates_and_databases_get_one_clear_line(
        report_db: tuple[Path, str, dict[str, Any]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config, url, _ = report_db
    code, _, err = run(capsys, "--config", str(config), "report", "--date", "29.11.2026",
                       "--database-url", url)
    assert code == 2 and "--date: expected YYYY-MM-DD" in err
    for day, period in (("9999-12-31", "month"), ("9999-12-31", "week"), ("0001-01-01", "day")):
        code, out, err = run(capsys, "--config", str(config), "report", "--date", day,
                             "--period", period, "--database-url", url)
        assert code == 2 and out == "" and err.strip().splitlines() == [
            f"callhub report: --date: the year must be 1900 to 9998, got {day!r}"]
    code, out, _ = run(capsys, "--config", str(config), "report", "--date", "9998-12-31",
                       "--period", "month", "--database-url", url)  # the last month there is
    assert code == 0 and "9998-12" in out
    empty = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    code, out, err = run(capsys, "--config", str(config), "report", "--date", "today",
                         "--database-url", empty)
    assert code == 1 and out == "" and err.splitlines() == [
        f"callhub: database {empty} does not exist: no file {tmp_path / 'empty.db'} "
        "(`callhub db upgrade` creates it)"]
    assert not (tmp_path / "empty.db").exists()  # a report creates no database
    sqlite3.connect(tmp_path / "empty.db").close()  # a file without callhub's tables
    code, out, err = run(capsys, "--config", str(config), "report", "--date", "today",
                         "--database-url", empty)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "database" in err and "`callhub db upgrade` creates them" in err


def test_parse_day_knows_today_and_yesterday() -> None:
    today = date(2026, 3, 1)
    assert parse_day("today", SHANGHAI, today) == today
    assert parse_day("yesterday", SHANGHAI, today) == today - timedelta(days=1)
    assert parse_day("2026-02-28", SHANGHAI, today) == date(2026, 2, 28)
    with pytest.raises(ValueError, match="--date"):
        parse_day("2026-02-30", SHANGHAI, today)


def test_a_pbx_neither_configured_nor_stored_is_refused_naming_the_known_ones(
        report_db: tuple[Path, str, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    config, url, expected = report_db  # the stored calls are the PBX "main"'s; no [[pbx]]
    common = ("--config", str(config), "report", "--date", "2026-11-29", "--database-url", url)
    code, out, err = run(capsys, *common, "--pbx", "mian")  # a typo: not an all-zero report
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "callhub report: --pbx: no PBX named 'mian' is known "
        "(configured: none; with stored calls: main)"]
    code, out, _ = run(capsys, *common, "--pbx", "main", "--format", "json")
    assert code == 0 and json.loads(out)["totals"] == expected["totals"]
    # A configured PBX with no calls yet is a quiet PBX, not a typo: its zeros are right.
    config.write_text('timezone = "Asia/Shanghai"\n[[pbx]]\nname = "branch"\n'
                      '[[pbx]]\nname = "main"\n', encoding="utf-8")
    code, out, _ = run(capsys, *common, "--pbx", "branch", "--format", "json")
    assert code == 0 and json.loads(out)["totals"]["inbound"] == 0
    code, out, err = run(capsys, *common, "--pbx", "brnach")
    assert code == 2 and out == "" and err.strip().splitlines() == [
        "callhub report: --pbx: no PBX named 'brnach' is known "
        "(configured: branch, main; with stored calls: main)"]
