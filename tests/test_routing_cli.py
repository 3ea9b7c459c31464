"""`callhub rota load|check|show` through the real command-line entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from routing_fixtures import SAMPLE_ROTA

from callhub.cli import main


@pytest.fixture
def settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "callhub.toml"
    path.write_text(f'spool_dir = "{tmp_path / "spool"}"\ntimezone = "Europe/Berlin"\n',
                    encoding="utf-8")
    monkeypatch.delenv("CALLHUB_ROUTING_STATE_DIR", raising=False)
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    return path


def test_load_then_show(settings_file: Path, rota_file: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(settings_file), "rota", "load", str(rota_file)]) == 0
    assert "6 agents, 2 lines (hotline, sales), 4 shifts" in capsys.readouterr().out
    assert (tmp_path / "spool" / "routing" / "rota.json").exists()

    assert main(["--config", str(settings_file), "rota", "show", "--line", "hotline",
                 "--at", "2026-11-30T16:59"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == ("line hotline (DIDs: 4008001004, 4008001005) at 2026-11-30T16:59+01:00 "
                        "Europe/Berlin")
    assert "ring timeout 12 s per agent, fallback PJSIP/1000" in out
    offered = [line.split()[1] for line in lines if line.strip()[:2] in ("1.", "2.", "3.")]
    assert offered == ["Ann", "Ben", "Cai"]
    rings = {line.split()[1]: line for line in lines if line.strip()[:2] in ("1.", "2.", "3.")}
    assert "rings" not in rings["Ann"]  # the line's 12 s
    assert rings["Ben"].endswith("takes calls, rings 20 s")  # his own
    assert rings["Cai"].endswith("takes calls, rings 8 s")  # the hotline's entry for cai
    assert "Dora (trainee)" in out and "not cleared (trainee)" in out
    assert "inactive" in out
    assert "next change in who is on duty: 2026-11-30T17:00+01:00" in out


def test_show_json_by_did_after_midnight(settings_file: Path, rota_file: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    main(["--config", str(settings_file), "rota", "load", str(rota_file)])
    capsys.readouterr()
    assert main(["--config", str(settings_file), "rota", "show", "--line", "4008001005",
                 "--at", "2026-12-05T01:30", "--format", "json"]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["line"] == "hotline"
    assert [a["id"] for a in report["on_duty"]] == ["cai"]
    assert report["on_duty"][0]["ring_timeout"] == 8 and report["ring_timeout"] == 12
    assert report["next_change"] == "2026-12-05T06:00+01:00"


@pytest.mark.parametrize(("old", "new", "problem"), [
    ('end = "22:00"', 'end = "22:75"',
     "line 'hotline', shift 'evening': end: expected \"HH:MM\", got '22:75'"),
    # A folder of the tz database is no zone (ZoneInfo fails with IsADirectoryError).
    ('timezone = "Europe/Berlin"', 'timezone = "America"',
     "timezone: unknown time zone 'America'"),
    # Seconds were dropped when the rota was saved: 08:00:30-08:00 passed the check and
    # failed the load with a traceback (start equal to end).
    ('start = "08:00"', 'start = "08:00:30"',
     "line 'hotline', shift 'day': start: whole minutes only"),
])
def test_load_refuses_a_bad_file_and_keeps_the_old_rota(
        settings_file: Path, rota_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], old: str, new: str, problem: str) -> None:
    main(["--config", str(settings_file), "rota", "load", str(rota_file)])
    saved = (tmp_path / "spool" / "routing" / "rota.json").read_bytes()
    bad = tmp_path / "bad.toml"
    assert old in SAMPLE_ROTA
    bad.write_text(SAMPLE_ROTA.replace(old, new), encoding="utf-8")
    capsys.readouterr()
    assert main(["--config", str(settings_file), "rota", "load", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("callhub: rota error: ") and problem in err, err
    assert len(err.splitlines()) == 1, err  # one clear line, no traceback
    assert (tmp_path / "spool" / "routing" / "rota.json").read_bytes() == saved
    assert main(["--config", str(settings_file), "rota", "check", str(bad)]) == 2
    assert problem in capsys.readouterr().err


def test_show_without_a_rota_says_so(settings_file: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(settings_file), "rota", "show"]) == 1
    assert "no rota loaded" in capsys.readouterr().err


def test_show_uses_rota_file_from_settings(tmp_path: Path, rota_file: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    config = tmp_path / "c.toml"
    config.write_text(f'spool_dir = "{tmp_path / "s2"}"\nrota_file = "{rota_file}"\n',
                      encoding="utf-8")
    assert main(["--config", str(config), "rota", "show", "--line", "sales",
                 "--at", "2026-11-30T03:00+01:00"]) == 0
    assert "Ann" in capsys.readouterr().out


@pytest.mark.parametrize("at", ["9999-12-31T23:59", "1899-12-31T12:00"])
def test_show_at_a_year_out_of_range_is_one_clear_line(
        settings_file: Path, rota_file: Path, capsys: pytest.CaptureFixture[str],
        at: str) -> None:
    """In 9999 the next shift change overflowed a datetime: a traceback."""
    main(["--config", str(settings_file), "rota", "load", str(rota_file)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(["--config", str(settings_file), "rota", "show", "--at", at])
    assert stopped.value.code == f"callhub: --at: the year must be 1900 to 9998, got {at!r}"
    assert main(["--config", str(settings_file), "rota", "show",
                 "--at", "9998-12-31T23:59"]) == 0  # the latest there is
    assert "line hotline" in capsys.readouterr().out


def test_a_rota_of_one_agent_one_line_one_shift_is_counted_in_the_singular(
        settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rota = tmp_path / "small.toml"
    rota.write_text('[[agents]]\nid = "ann"\nname = "Ann"\ninterface = "PJSIP/1001"\n\n'
                    '[[lines]]\nname = "hotline"\ndids = ["4008001004"]\n'
                    'rotation = ["ann"]\n\n[[lines.shifts]]\nname = "day"\n'
                    'days = ["mon-fri"]\nstart = "08:00"\nend = "17:00"\n'
                    'agents = ["ann"]\n', encoding="utf-8")
    assert main(["--config", str(settings_file), "rota", "check", str(rota)]) == 0
    assert capsys.readouterr().out == f"{rota}: ok: 1 agent, 1 line (hotline), 1 shift\n"
    assert main(["--config", str(settings_file), "rota", "load", str(rota)]) == 0
    assert capsys.readouterr().out.endswith(": 1 agent, 1 line (hotline), 1 shift\n")


@pytest.mark.parametrize(("action", "says"), [
    ("load", ["only when it is right", "rota.json", "CALLHUB_ROUTING_STATE_DIR",
              "<spool_dir>/routing", "exit 2 when the file is wrong"]),
    ("check", ["reading nothing else and changing nothing", "exit 2"]),
    ("show", ["rota.json", "rota_file", "rotation.json", "nobody is skipped as busy"]),
])
def test_each_rota_action_s_help_says_what_it_does_and_what_it_reads(
        action: str, says: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["rota", action, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal
    for words in says:
        assert words in text, (action, words)
    with pytest.raises(SystemExit):
        main(["rota", "--help"])
    listing = " ".join(capsys.readouterr().out.split())
    assert {"load": "make it the active rota (rota.json)",
            "check": "without loading it (reads only the file)",
            "show": "in rotation order (reads the active rota)"}[action] in listing
