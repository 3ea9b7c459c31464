"""`[lines."<line>"]`: each line's ring and answer-rate targets, as the config file sets them."""

from __future__ import annotations

from pathlib import Path

import pytest

from callhub.config import ConfigError, load_settings
from callhub.config.targets import LineTarget, LineTargets, tally_rings

LINES = """
[pbx.lines]
"4008001000" = "front-desk"
"4008005000" = "petition"
"""


def load(tmp_path: Path, text: str) -> LineTargets:
    path = tmp_path / "callhub.toml"
    path.write_text(LINES + text, encoding="utf-8")
    return load_settings(path, env={}).line_targets()


def test_each_line_has_its_own_target_and_the_rest_the_defaults(tmp_path: Path) -> None:
    targets = load(tmp_path, """
[desk.targets]
within_rings_rate = 0.85

[lines.petition]
target_rings = 5
answer_rate_target = 0.8
""")
    assert targets.of("petition") == LineTarget(5, 0.8)
    # Unconfigured lines (and calls with no line): 3 rings, the desk's within-rings target.
    assert targets.of("front-desk") == LineTarget(3, 0.85)
    assert targets.of("4008009999") == targets.of(None) == LineTarget(3, 0.85)
    assert targets.known == ("front-desk", "petition")
    assert targets.ring_counts() == (3, 5)


def test_a_star_table_sets_every_other_lines_target(tmp_path: Path) -> None:
    targets = load(tmp_path, """
[lines."*"]
target_rings = 4
answer_rate_target = 0.7

[lines."front-desk"]
target_rings = 2
""")
    assert targets.of("petition") == targets.of(None) == LineTarget(4, 0.7)
    assert targets.of("front-desk") == LineTarget(2, 0.7)  # the rate it does not set


def test_without_a_lines_table_every_line_has_three_rings(tmp_path: Path) -> None:
    targets = load(tmp_path, "")
    assert targets.of("front-desk") == LineTarget(3, 0.9)
    assert targets.lines == {}


@pytest.mark.parametrize(("text", "key", "says"), [
    ('[lines.petition]\ntarget_rings = 0\n', "lines.petition.target_rings", ">= 1"),
    ('[lines.petition]\ntarget_rings = "5"\n', "lines.petition.target_rings", "expected int"),
    ('[lines.petition]\ntarget_rings = 5.0\n', "lines.petition.target_rings", "expected int"),
    ('[lines.petition]\nanswer_rate_target = 1.5\n', "lines.petition.answer_rate_target",
     "<= 1"),
    ('[lines.petition]\nanswer_rate_target = -0.1\n', "lines.petition.answer_rate_target",
     ">= 0"),
    ('[lines.petition]\ntarget_ring = 5\n', "lines.petition.target_ring", "unknown setting"),
    ('[lines]\npetition = 5\n', "lines.petition", "expected a table"),
])
def test_a_bad_target_names_its_key(tmp_path: Path, text: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert str(caught.value).startswith(key + ": "), caught.value
    assert says in str(caught.value)


def test_a_table_for_an_unknown_line_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, '[lines."front_desk"]\ntarget_rings = 4\n')
    message = str(caught.value)
    assert message.startswith("lines.front_desk: unknown line")
    assert "front-desk, petition" in message


def test_config_check_shows_the_line_tables(tmp_path: Path) -> None:
    path = tmp_path / "callhub.toml"
    path.write_text(LINES + "[lines.petition]\ntarget_rings = 5\n", encoding="utf-8")
    masked = load_settings(path, env={}).masked()
    assert masked["line_tables"] == {"petition": {"target_rings": 5}}


def test_the_tally_applies_each_lines_own_target() -> None:
    targets = LineTargets(LineTarget(3, 0.9), {"petition": LineTarget(5, 0.8)})
    rows = [("petition", 5, 2), ("petition", 6, 1), ("petition", None, 1),
            ("front-desk", 3, 4), ("front-desk", 4, 3), (None, 1, 1), (None, None, 2)]
    tallies = tally_rings(rows, targets)
    assert {line: (t.inbound, t.answered, t.within_target) for line, t in tallies.items()} == {
        "petition": (4, 3, 2), "front-desk": (7, 7, 4), None: (3, 1, 1)}
