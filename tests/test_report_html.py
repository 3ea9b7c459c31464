"""The HTML report: well-formed, self-contained (no script, no external URL), the figures in it."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from test_report import report_db, run  # noqa: F401  (fixture)

from callhub.report.html import TEXT, to_html

VOID = {"meta", "br", "img", "hr", "link", "input"}
SVG_EMPTY = {"rect"}


class Checker(HTMLParser):
    """Tags nest and close; remembers every tag and attribute seen."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def check(page: str) -> Checker:
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == [] and checker.stack == [], (checker.errors, checker.stack)
    return checker


def week_report(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: Path, url: str,
                *extra: str) -> str:
    code, out, err = run(capsys, "--config", str(config), "report", "--period", "week",
                         "--date", "2026-11-26", "--database-url", url, *extra)
    assert code == 0, err
    return out


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_week_page_is_well_formed_self_contained_and_has_the_figures(
        report_db: tuple[Path, str, dict[str, Any]], tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str], lang: str) -> None:
    config, url, _ = report_db
    figures = json.loads(week_report(tmp_path, capsys, config, url, "--format", "json"))
    page = week_report(tmp_path, capsys, config, url, "--format", "html", "--lang", lang)
    checker = check(page)
    assert "script" not in checker.tags and "<script" not in page.lower()
    assert "style" not in checker.tags and "link" not in checker.tags, "inline styles only"
    assert not re.search(r"(https?:)?//|url\(|src=", page), "no external resource"
    assert not any(name.startswith("on") for name, _ in checker.attrs), "no event handlers"
    assert checker.tags.count("svg") >= 2 * (len(figures["lines"]) + len(figures["agents"])) + 1
    totals = figures["totals"]
    assert f">{totals['inbound']}<" in page
    assert f"{totals['answer_rate'] * 100:.1f} %" in page
    assert f"{totals['within_rings_rate'] * 100:.1f} %" in page
    for line in (g for g in figures["lines"] if g["answer_rate"] is not None):
        assert f"{line['answer_rate'] * 100:.1f} %" in page
    assert "李娜 (PJSIP/1001)" in page
    for agent in (g for g in figures["agents"] if g["within_rings_rate_answered"] is not None):
        assert f"{agent['within_rings_rate_answered'] * 100:.1f} %" in page
    assert [d["date"] for d in figures["days"]] == [f"2026-11-{d}" for d in range(23, 30)]
    assert sum(d["inbound"] for d in figures["days"]) == totals["inbound"]
    for day in figures["days"]:
        assert f">{day['date']}<" in page
    assert TEXT[lang]["title.week"] in page and TEXT[lang]["per_day"] in page
    assert ('lang="zh-CN"' if lang == "zh" else 'lang="en"') in page


def test_a_bar_is_as_long_as_its_rate_and_names_are_escaped() -> None:
    block = {"key": "<b>&x", "inbound": 4, "answered": 3, "answer_rate": 0.75,
             "within_rings_rate": 0.5}
    report = {"date": "2026-11-29", "period": "day", "last_date": "2026-11-29",
              "timezone": "UTC", "rings": 5, "pbx": None,
              "totals": block | {"missed": 1, "abandoned": 0, "outbound": 0,
                                 "pending_callbacks": 1, "handled_callbacks": 0},
              "lines": [block], "agents": []}
    page = to_html(report, "en")
    check(page)
    assert "&lt;b&gt;&amp;x" in page and "<b>&x" not in page
    assert '<rect width="120" height="10"' in page and '<rect width="80" height="10"' in page
    assert "Answered within 5 rings" in page and "Calls per day" not in page


def test_the_language_defaults_to_the_report_setting(
        report_db: tuple[Path, str, dict[str, Any]], tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    config, url, _ = report_db
    page = week_report(tmp_path, capsys, config, url, "--format", "html")
    assert TEXT["zh"]["title.week"] in page, "zh without a [report] lang"
    config.write_text(config.read_text() + '[report]\nlang = "en"\n', encoding="utf-8")
    page = week_report(tmp_path, capsys, config, url, "--format", "html")
    assert TEXT["en"]["title.week"] in page
