"""Reading a cel_pgsql table on PostgreSQL, then rebuilding its calls.

The table is created with cel_pgsql's documented columns and types in a
schema of the test's own, filled with the traces' CEL events as cel_pgsql would
have inserted them (eventtime in UTC, ids from the serial in arrival order).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cel_fixtures import CelDb, pbx_toml, run_callhub, trace_rows, window_of
from sqlalchemy.engine import make_url
from store_fixtures import pg_url
from traces_fixtures import all_traces, trace

from callhub.ami.cel import interpret
from callhub.ami.groundtruth import compare, load_truth, pbx_from_truth
from callhub.cli import main
from callhub.records import CallRecord
from callhub.store.cel_source import read_cel


async def test_every_trace_read_back_from_the_cel_table_rebuilds_its_ground_truth(
        cel_db: CelDb) -> None:
    await cel_db.create()
    traces = all_traces()
    for path in traces:
        await cel_db.insert(trace_rows(path))
    for path in traces:
        rows = trace_rows(path)
        start, end = window_of(rows)
        read = await read_cel(cel_db.engine, start=start, end=end, table=cel_db.table)
        assert [(r["linkedid"], r["uniqueid"], r["eventtype"]) for r in read] == [
            (r["linkedid"], r["uniqueid"], r["eventtype"]) for r in rows], path.stem
        truth = load_truth(path)
        assert compare(interpret(read, pbx_from_truth(truth)), truth) == [], path.stem


async def test_a_window_touching_part_of_a_call_reads_the_whole_call(cel_db: CelDb) -> None:
    await cel_db.create()
    first = trace_rows(trace("01_answered_caller_hangup"))
    second = trace_rows(trace("02_answered_agent_hangup"))
    await cel_db.insert(first + second)
    answer = next(r["eventtime"] for r in first if r["eventtype"] == "ANSWER")
    start = answer.replace(tzinfo=UTC)
    read = await read_cel(cel_db.url, start=start, end=start + timedelta(seconds=1),
                          table=cel_db.table)
    assert [r["id"] for r in read] == list(range(1, len(first) + 1))
    assert {r["linkedid"] for r in read} == {first[0]["linkedid"]}
    assert read[0]["eventtime"] == first[0]["eventtime"]  # microseconds kept, naive UTC


async def test_a_window_without_rows_reads_nothing(cel_db: CelDb) -> None:
    await cel_db.create()
    rows = trace_rows(trace("01_answered_caller_hangup"))
    await cel_db.insert(rows)
    start, _ = window_of(rows)
    earlier = await read_cel(cel_db.engine, start=start - timedelta(hours=1),
                             end=start, table=cel_db.table)
    assert earlier == []


async def test_naive_bounds_are_utc_and_timestamptz_columns_work(cel_db: CelDb) -> None:
    await cel_db.create(eventtime="timestamptz")
    rows = trace_rows(trace("p01_sip_direct_utf8_caller_hangup"))
    await cel_db.insert(rows, zoned=True)
    start, end = window_of(rows)
    naive = await read_cel(cel_db.engine, start=start.replace(tzinfo=None),
                           end=end.replace(tzinfo=None), table=cel_db.table)
    assert len(naive) == len(rows)
    truth = load_truth(trace("p01_sip_direct_utf8_caller_hangup"))
    assert compare(interpret(naive, pbx_from_truth(truth)), truth) == []


async def test_a_table_that_is_not_cel_is_refused(cel_db: CelDb) -> None:
    async with cel_db.engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE TABLE "{cel_db.schema}".cel (id int)'))
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="not a CEL table"):
        await read_cel(cel_db.engine, start=now, end=now, table=cel_db.table)


async def test_backfill_command_prints_the_calls_of_a_window(cel_db: CelDb,
                                                             tmp_path: Path) -> None:
    """`callhub backfill` as an admin runs it: a config, a window, the CEL database."""
    await cel_db.create()
    names = ["03_abandoned_ringing", "04_missed_noanswer_voicemail", "06_huntgroup_rna_then_answer"]
    rows = {name: trace_rows(trace(name)) for name in names}
    for name in names:
        await cel_db.insert(rows[name])
    truths = {name: load_truth(trace(name)) for name in names}
    config = tmp_path / "callhub.toml"
    config.write_text(pbx_toml(truths[names[0]]["expected"]["config"]), encoding="utf-8")
    start = window_of(rows[names[0]])[0]
    end = window_of(rows[names[-1]])[1]
    code, out, err = await run_callhub(
        "backfill", "--config", str(config), "--from", start.isoformat(),
        "--to", end.isoformat(), "--cel-database-url", cel_db.url,
        "--cel-table", cel_db.table, "--dry-run", cwd=tmp_path)
    assert code == 0, err
    records = [CallRecord.from_dict(json.loads(line)) for line in out.splitlines()]
    assert len(records) == len(names)
    assert all(r.source == "cel" and r.pbx == "lab" for r in records)
    together = {"expected": {**truths[names[0]]["expected"],
                             "calls": [c for t in truths.values() for c in t["expected"]["calls"]]}}
    assert compare(records, together) == []
    assert "3 calls rebuilt from CEL, none stored" in err


async def test_backfill_counts_one_call_in_the_singular(cel_db: CelDb, tmp_path: Path) -> None:
    """An operator's review read "1 calls rebuilt from CEL"."""
    await cel_db.create()
    name = "03_abandoned_ringing"
    rows = trace_rows(trace(name))
    await cel_db.insert(rows)
    config = tmp_path / "callhub.toml"
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    config.write_text(f"database_url = {json.dumps(db_url)}\n"
                      + pbx_toml(load_truth(trace(name))["expected"]["config"]), encoding="utf-8")
    start, end = window_of(rows)
    window = ["backfill", "--config", str(config), "--from", start.isoformat(),
              "--to", end.isoformat(), "--cel-database-url", cel_db.url,
              "--cel-table", cel_db.table]
    code, out, err = await run_callhub(*window, cwd=tmp_path)
    assert code == 0 and len(out.splitlines()) == 1, err
    assert err == "callhub backfill: 1 call rebuilt from CEL, none stored\n"
    assert (await run_callhub("db", "upgrade", "--config", str(config), cwd=tmp_path))[0] == 0
    code, out, err = await run_callhub(*window, "--store", cwd=tmp_path)
    assert (code, out) == (0, ""), err
    assert err == ("callhub backfill: 1 call rebuilt from CEL, 1 stored, 0 already stored, "
                   "0 in progress (not stored)\n")


def test_a_cel_database_refusing_the_login_is_one_line_naming_it_password_masked(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    url = make_url(pg_url()).set(password="not-the-password")
    wrong = url.render_as_string(hide_password=False)
    now = datetime.now(UTC)
    code = main(["backfill", "--pbx", "main", "--from", now.isoformat(),
                 "--to", (now + timedelta(hours=1)).isoformat(), "--cel-database-url", wrong])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1, err  # not SQLAlchemy's "Background on ..."
    masked = f"{url.drivername}://{url.username}:***@{url.host}:{url.port}/{url.database}"
    assert err.startswith(f"callhub backfill: cannot read the CEL table 'cel': database {masked}: ")
    assert "password authentication failed" in err and "not-the-password" not in err


def test_backfill_command_says_what_is_wrong(cel_db: CelDb, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    now = datetime.now(UTC).isoformat()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    window = ["backfill", "--pbx", "main", "--from", now, "--to", later]
    assert main(["backfill", "--pbx", "main", "--from", now, "--to", now,
                 "--cel-database-url", cel_db.url]) == 2
    assert "--to must be after --from" in capsys.readouterr().err
    assert main(window) == 2
    assert "give --cel-database-url" in capsys.readouterr().err
    assert main([*window, "--cel-database-url", cel_db.url,
                 "--cel-table", f"{cel_db.schema}.nothing"]) == 1
    assert f"no table '{cel_db.schema}.nothing'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["backfill", "--from", "yesterday", "--to", later])
    assert "not an ISO 8601 time" in capsys.readouterr().err
    for start, end in (("9999-12-31T22:00", "9999-12-31T23:00"),  # OverflowError tracebacks
                       ("0001-01-01", "2026-01-01")):  # past the CEL read's margin
        with pytest.raises(SystemExit):
            main([*window[:3], "--from", start, "--to", end, "--cel-database-url", cel_db.url])
        assert "the year must be 1900 to 9998" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--cel-table", "--pbx"])
@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
def test_an_empty_name_is_refused_not_taken_for_the_default(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str) -> None:
    """`--cel-table ""` read the table `cel`, `--pbx ""` took the config's only PBX: a
    script's unset variable did something no one asked for."""
    config = tmp_path / "callhub.toml"
    config.write_text('[[pbx]]\nname = "main"\n', encoding="utf-8")
    cel = f"sqlite+aiosqlite:///{tmp_path / 'cel.db'}"
    with pytest.raises(SystemExit) as exited:
        main(["backfill", "--config", str(config), "--from", "2026-11-29", "--to", "2026-11-30",
              "--cel-database-url", cel, option, value])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"callhub backfill: error: argument {option}: must not be empty (leave it out for the "
        "default)")
    assert not (tmp_path / "cel.db").exists()
