"""The [followups] and [desk] settings: durations, categories, targets; errors name the key."""

from __future__ import annotations

import re

import pytest

from callhub.config import ConfigError, parse_duration, settings_from_mapping


def test_rules_targets_and_poll_interval_load() -> None:
    settings = settings_from_mapping({
        "categories": ["repair", "complaint", "other"],
        "followups": {"repair": ["48h", "24h"], "complaint": ["1d12h"],
                      "overdue_after": "30m"},
        "desk": {"poll_seconds": 2, "targets": {"answer_rate": 0.9, "missed": 3}},
    })
    assert settings.followup_rules == {"repair": (86400.0, 172800.0), "complaint": (129600.0,)}
    assert settings.followup_overdue_seconds == 1800.0
    assert settings.desk_poll_seconds == 2.0
    assert settings.desk_targets["answer_rate"] == 0.9 and settings.desk_targets["missed"] == 3
    assert settings.desk_targets["within_rings_rate"] == 0.9  # default kept


def test_defaults_without_the_tables() -> None:
    settings = settings_from_mapping({})
    assert settings.followup_rules == {} and settings.followup_overdue_seconds == 3600.0
    assert settings.desk_poll_seconds == 5.0


@pytest.mark.parametrize(("data", "message"), [
    ({"followups": {"repairs": ["24h"]}}, "followups.repairs: unknown category"),
    ({"followups": {"repair": ["24"]}}, "followups.repair[0]: expected a duration"),
    ({"followups": {"repair": ["1h", "2x"]}}, "followups.repair[1]: expected a duration"),
    ({"followups": {"repair": "24h"}}, "followups.repair: expected a list"),
    ({"followups": {"repair": []}}, "followups.repair: expected a list"),
    ({"followups": {"repair": ["0h"]}}, "followups.repair[0]: must be longer than 0"),
    ({"followups": {"overdue_after": 60}}, "followups.overdue_after: expected str"),
    ({"desk": {"poll": 1}}, "desk.poll: unknown setting"),
    ({"desk": {"poll_seconds": 0}}, "desk.poll_seconds: must be >= 0.2"),
    ({"desk": {"targets": {"answer_rate": 95}}}, "desk.targets.answer_rate: a rate between"),
    ({"desk": {"targets": {"speed": 1}}}, "desk.targets.speed: unknown setting"),
])
def test_bad_values_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings_from_mapping(data)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("30m", 1800.0), ("24h", 86400.0), ("2d", 172800.0),
    ("1d12h", 129600.0), ("1.5h", 5400.0), (" 2h ", 7200.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "k") == seconds


@pytest.mark.parametrize("text", ["", "h", "24", "1 h", "1w", "-1h", "h1", "1h-", None, 5])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ConfigError, match=r"^k: "):
        parse_duration(text, "k")
