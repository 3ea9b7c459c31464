"""Rota files: the sample loads as written, round-trips through the saved JSON form, and
every kind of mistake is refused with a message naming the line, shift and key."""

from __future__ import annotations

import re
from datetime import date, time
from pathlib import Path

import pytest
from routing_fixtures import SAMPLE_ROTA

from callhub.routing.model import Rota
from callhub.routing.rota_file import RotaError, load_rota, parse_days, rota_from_data, save_rota


def test_sample_rota_loads_with_its_shifts_and_exceptions(sample_rota: Rota) -> None:
    hotline = sample_rota.lines["hotline"]
    assert hotline.rotation == ("ann", "ben", "cai", "dora", "eve")
    assert hotline.ring_timeout == 12
    night = next(s for s in hotline.shifts if s.name == "night")
    assert night.crosses_midnight and night.days == {4, 5}
    assert night.start == time(22, 0) and night.end == time(6, 0)
    assert [e.name for e in hotline.exceptions] == [
        "christmas", "ann swaps with lead", "ben away in the afternoon"]
    assert hotline.exceptions[0].day == date(2026, 12, 25) and hotline.exceptions[0].closed
    sales = sample_rota.lines["sales"]
    # rotation defaults to the first appearance in the shifts; shift agents to the rotation
    assert sales.rotation == ("ann", "ben") and sales.shifts[0].agents == ("ann", "ben")
    assert sales.shifts[0].ends_at_midnight and not sales.shifts[0].crosses_midnight
    assert not sample_rota.agents["dora"].can_take_calls
    assert not sample_rota.agents["eve"].can_take_calls
    assert sample_rota.line_for("4008001005") is hotline
    assert sample_rota.line_for("hotline") is hotline
    assert sample_rota.line_for("999") is None


def test_ring_timeout_per_agent(sample_rota: Rota) -> None:
    """The line's entry for the agent beats the agent's own, which beats the line's."""
    hotline, sales = sample_rota.lines["hotline"], sample_rota.lines["sales"]
    agents = sample_rota.agents
    assert agents["ben"].ring_timeout == 20 and agents["ann"].ring_timeout is None
    assert dict(hotline.ring_timeouts) == {"cai": 8}
    assert [hotline.ring_timeout_for(agents[a]) for a in ("ann", "ben", "cai")] == [12, 20, 8]
    assert [sales.ring_timeout_for(agents[a]) for a in ("ann", "ben", "cai")] == [15, 20, 15]
    overridden = rota_from_data({**sample_rota.to_data(), "lines": [
        {**line_data, "ring_timeouts": {"ben": 9}}
        for line_data in sample_rota.to_data()["lines"] if line_data["name"] == "hotline"]})
    assert overridden.lines["hotline"].ring_timeout_for(agents["ben"]) == 9


def test_saved_json_reads_back_equal(sample_rota: Rota, tmp_path: Path) -> None:
    path = tmp_path / "saved" / "rota.json"
    save_rota(sample_rota, path)
    again = load_rota(path)
    assert again.to_data() == sample_rota.to_data()
    assert again.agents["ben"].ring_timeout == 20
    assert again.lines["hotline"].ring_timeouts == {"cai": 8}
    assert again.lines == sample_rota.lines and again.agents == sample_rota.agents


def test_weekday_forms() -> None:
    assert parse_days(["mon-fri"]) == frozenset(range(5))
    assert parse_days(["fri-mon"]) == frozenset({4, 5, 6, 0})
    assert parse_days("daily") == frozenset(range(7))
    assert parse_days(["Sunday", "sat"]) == frozenset({5, 6})
    with pytest.raises(ValueError, match="unknown weekday 'mo'"):
        parse_days(["mo"])


def _broken(old: str, new: str) -> str:
    assert old in SAMPLE_ROTA, old
    return SAMPLE_ROTA.replace(old, new, 1)


@pytest.mark.parametrize(("old", "new", "message"), [
    ('start = "17:00"\nend = "22:00"', 'start = "17:00"\nend = "25:00"',
     "line 'hotline', shift 'evening': end: expected \"HH:MM\", got '25:00'"),
    ('start = "08:00"\nend = "17:00"', 'start = "08:00"\nend = "08:00"',
     "line 'hotline', shift 'day': end: equals start"),
    ('days = ["fri", "sat"]', 'days = ["fri", "sam"]',
     "line 'hotline', shift 'night': days: unknown weekday 'sam'"),
    ('agents = ["ben", "cai"]', 'agents = ["ben", "zoe"]',
     "line 'hotline', shift 'evening': agents: unknown agent 'zoe'"),
    ('agents = ["ben", "cai"]', 'agents = ["ben", "lead"]',
     "line 'hotline', shift 'evening': agents: 'lead' is not in the line's rotation"),
    # without a rotation, one is made from the shifts: the shift is blamed, not the rotation
    ('rotation = ["ann", "ben"]\n\n[[lines.shifts]]\nname = "always"\n',
     '\n[[lines.shifts]]\nname = "always"\nagents = ["ann", "bob"]\n',
     "line 'sales', shift 'always': agents: unknown agent 'bob'"),
    ('rotation = ["ann", "ben"]', 'rotation = []',
     "line 'sales', shift 'always': agents: not given, and the line's rotation (their "
     "default) is empty"),
    ('rotation = ["ann", "ben", "cai", "dora", "eve"]',
     'rotation = ["ann", "ben", "cai", "dora", "eve", "ann"]',
     "line 'hotline': rotation: listed twice: ann"),
    ('rotation = ["ann", "ben"]', 'rotation = ["ann", "bob"]',
     "line 'sales': rotation: unknown agent 'bob'"),
    ('ring_timeout = 12', 'ring_timeout = 0',
     "line 'hotline': ring_timeout: must be 1-600 seconds, got 0"),
    ('ring_timeout = 12', 'ring_timeout = "12"',
     "line 'hotline': ring_timeout: expected int, got '12'"),
    ('interface = "PJSIP/1002"\nring_timeout = 20', 'interface = "PJSIP/1002"\nring_timeout = 0',
     "agent 'ben': ring_timeout: must be 1-600 seconds, got 0"),
    ('interface = "PJSIP/1002"\nring_timeout = 20',
     'interface = "PJSIP/1002"\nring_timeout = 20.5',
     "agent 'ben': ring_timeout: expected int, got 20.5"),
    ('ring_timeouts = { cai = 8 }', 'ring_timeouts = { zoe = 8 }',
     "line 'hotline': ring_timeouts.zoe: unknown agent 'zoe'"),
    ('ring_timeouts = { cai = 8 }', 'ring_timeouts = { cai = 601 }',
     "line 'hotline': ring_timeouts.cai: must be 1-600 seconds, got 601"),
    ('ring_timeouts = { cai = 8 }', 'ring_timeouts = { cai = "8" }',
     "line 'hotline': ring_timeouts.cai: expected int, got '8'"),
    ('ring_timeouts = { cai = 8 }', 'ring_timeouts = 8',
     "line 'hotline': ring_timeouts: expected dict, got 8"),
    ('date = "2026-12-25"', 'date = "2026-13-25"',
     "line 'hotline', exception #1: date: expected \"YYYY-MM-DD\""),
    ('swap = { ann = "lead" }', 'swap = { ann = "nobody" }',
     "line 'hotline', exception 'ann swaps with lead': swap: unknown agent 'nobody'"),
    ('swap = { ann = "lead" }', 'swap = { zoe = "lead" }',
     "line 'hotline', exception 'ann swaps with lead': swap: unknown agent 'zoe'"),
    ('swap = { ann = "lead" }', 'swap = { lead = "ann" }',
     "line 'hotline', exception 'ann swaps with lead': swap: 'lead' is not in the line's "
     "rotation"),
    ('absent = ["ben"]', 'absent = ["zoe"]',
     "line 'hotline', exception 'ben away in the afternoon': absent: unknown agent 'zoe'"),
    ('absent = ["ben"]', 'absent = ["lead"]',
     "line 'hotline', exception 'ben away in the afternoon': absent: 'lead' is not in the "
     "line's rotation"),
    ('absent = ["ben"]', 'extra = ["zoe"]',
     "line 'hotline', exception 'ben away in the afternoon': extra: unknown agent 'zoe'"),
    ('closed = true', 'closed = false',
     "line 'hotline', exception 'christmas': closed: an exception needs"),
    ('dids = ["4008009000"]', 'dids = ["4008001004"]',
     "line 'sales': dids: '4008001004' already belongs to line 'hotline'"),
    ('interface = "PJSIP/1002"', 'interface = "PJSIP/1001"',
     "agent 'ben': interface 'PJSIP/1001' already belongs to agent 'ann'"),
    ('interface = "PJSIP/1002"', 'interface = "1002"',
     "agent 'ben': interface: expected a device"),
    ('cleared = false', 'cleared = "no"', "agent 'dora': cleared: expected bool"),
    ('name = "evening"\n', 'name = "evening"\nbreak = "12:00"\n',
     "line 'hotline', shift 'evening': break: unknown key"),
    ('timezone = "Europe/Berlin"', 'timezone = "Europe/Atlantis"',
     "timezone: unknown time zone 'Europe/Atlantis'"),
    ('id = "ben"', 'id = "ben "', "agents[1]: id: must not start or end with spaces"),
    ('name = "sales"', 'name = "sales\\u0085"',
     "lines[1]: name: must not start or end with spaces"),
    ('name = "sales"', 'name = "sa\\u200bles"',
     "lines[1]: name: must not contain control characters"),
    ('name = "sales"', 'name = "' + "销" * 129 + '"',
     "name: must be at most 128 characters, got 129"),
    ('id = "ben"', 'id = "' + "b" * 129 + '"',
     "id: must be at most 128 characters, got 129"),
    ('dids = ["4008009000"]', 'dids = [" 4008009000"]',
     "line 'sales': dids: expected a list of non-empty strings without surrounding spaces"),
])
def test_mistakes_are_refused_naming_where(tmp_path: Path, old: str, new: str,
                                           message: str) -> None:
    path = tmp_path / "rota.toml"
    path.write_text(_broken(old, new), encoding="utf-8")
    with pytest.raises(RotaError) as info:
        load_rota(path)
    assert message in str(info.value)


def test_an_exception_may_end_at_24_00(tmp_path: Path, sample_rota: Rota) -> None:
    """docs/rota.md allows `end = "24:00"`: on an exception it is the rest of the day, as
    an end left out (ben's afternoon off, from 12:00)."""
    path = tmp_path / "rota.toml"
    path.write_text(_broken('start = "12:00"\nabsent', 'start = "12:00"\nend = "24:00"\nabsent'),
                    encoding="utf-8")
    away = load_rota(path).lines["hotline"].exceptions[2]
    assert away == sample_rota.lines["hotline"].exceptions[2]
    assert away.covers(time(23, 59)) and not away.covers(time(11, 59))


def test_unnamed_shift_is_named_by_its_number() -> None:
    data = {"agents": [{"id": "a", "interface": "PJSIP/1"}],
            "lines": [{"name": "l", "rotation": ["a"],
                       "shifts": [{"days": "daily", "start": "x", "end": "10:00"}]}]}
    with pytest.raises(RotaError, match="line 'l', shift '#1': start: expected"):
        rota_from_data(data)


def test_toml_syntax_error_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[lines]]\nname = "x\n', encoding="utf-8")
    with pytest.raises(RotaError, match=r"bad.toml: not valid TOML: .*line 2"):
        load_rota(path)


@pytest.mark.parametrize(("name", "text"), [("deep.json", "[" * 100_000),
                                            ("deep.toml", "a = " + "[" * 100_000)])
def test_a_rota_nested_too_deeply_is_a_clear_error(tmp_path: Path, name: str,
                                                   text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RotaError, match=f"{name}: not valid (JSON|TOML): nested too deeply"):
        load_rota(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RotaError, match="no such file"):
        load_rota(tmp_path / "nope.toml")


def _rota_page() -> str:
    """docs/rota.md, the page for whoever keeps the rota."""
    return (Path(__file__).parent.parent / "docs" / "rota.md").read_text(encoding="utf-8")


def test_docs_rota_example_loads(tmp_path: Path) -> None:
    example = _rota_page().split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "docs_rota.toml"
    path.write_text(example, encoding="utf-8")
    rota = load_rota(path)
    assert rota.lines["hotline"].shifts[1].crosses_midnight
    assert not rota.agents["zhao"].can_take_calls
    hotline, agents = rota.lines["hotline"], rota.agents
    assert [hotline.ring_timeout_for(agents[a]) for a in ("li", "wang", "zhao", "lead")] == [
        10, 25, 15, 15]  # as docs/rota.md says below its example


def test_dialplan_reads_the_variables_fastagi_sets() -> None:
    from callhub.routing.chooser import Decision
    from callhub.routing.fastagi import decision_variables

    conf = (Path(__file__).parent.parent / "deploy" / "asterisk" / "extensions.conf"
            ).read_text(encoding="utf-8")
    dialplan = "\n".join(line.split(";", 1)[0] for line in conf.splitlines())
    assert "AGI(${CALLHUB_AGI})" in dialplan and "agi://127.0.0.1:4573/route" in dialplan
    names = {name for name, _ in decision_variables(Decision(None, "error"))}
    for used in ("CALLHUB_TARGETS", "CALLHUB_TARGET_COUNT", "CALLHUB_RING_TIMEOUT",
                 "CALLHUB_RING_TIMEOUTS", "CALLHUB_FALLBACK", "CALLHUB_ROUTE_RESULT"):
        assert used in names and re.search(rf"[{{(]{used}[,}}]", dialplan), used
    # callhub not answering leads to a plain Dial of the dialplan's own default
    assert '"${AGISTATUS}" != "SUCCESS"' in dialplan
    assert "Dial(${CALLHUB_DEFAULT}" in dialplan
    # docs/rota.md shows the same loop as the dialplan ships (run in test_routing_dialplan.py)
    loop = re.search(r"^ same => n,Set\(CALLHUB_I=1\)\n(?:^ same => .*\n)*?^ same => n,EndWhile",
                     dialplan, re.M)
    assert loop and loop[0] in _rota_page()
