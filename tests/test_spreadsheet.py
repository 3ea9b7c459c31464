"""CSV cells a spreadsheet would run as formulas are made text, in the API's export and
in the reports alike; phone numbers and figures stay as they are."""

from __future__ import annotations

import csv
import io
from datetime import UTC

import pytest

from callhub.api.csv_export import cell
from callhub.report.figures import FIGURES, TARGET_COLUMNS, to_csv
from callhub.spreadsheet import safe_text

FORMULAS = ["=1+1", "+1+cmd|' /C calc'!A0", "-1+cmd|' /C calc'!A0", "@SUM(A1)", "\t=1+1",
            "\r=1+1", "=HYPERLINK(\"http://x\")"]
KEPT = ["+86 139 0013 9000", "13900139000", "-1", "李娜", "Wang Wei", ""]


@pytest.mark.parametrize("text", FORMULAS)
def test_a_formula_is_text_everywhere(text: str) -> None:
    assert safe_text(text) == "'" + text
    assert cell(text, UTC) == "'" + text


@pytest.mark.parametrize("text", KEPT)
def test_numbers_and_names_are_kept(text: str) -> None:
    assert safe_text(text) == text == cell(text, UTC)


def test_the_reports_csv_makes_an_agents_formula_text_and_keeps_its_figures() -> None:
    figures = dict.fromkeys(FIGURES, 0) | dict.fromkeys(TARGET_COLUMNS, None) | {
        FIGURES[0]: -1.5}
    report = {"date": "2026-12-01", "totals": figures, "lines": [],
              "agents": [{**figures, "key": "=1+1", "agent_name": "\t=cmd"}]}
    rows = list(csv.reader(io.StringIO(to_csv(report)[1:])))
    agent = dict(zip(rows[0], rows[2], strict=True))
    assert (agent["key"], agent["name"]) == ("'=1+1", "'\t=cmd")
    assert agent[FIGURES[0]] == "-1.5"
