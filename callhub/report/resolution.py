"""The report's resolution and satisfaction section (issue 13), in text and HTML.

Kept beside figures.py and html.py rather than inside their tables: the rates come
from callhub/store/resolution_stats.py (definitions there and in docs/api.md), per
period (the totals), per line, per agent and, for a week or a month, per day.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import Any

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Resolution and satisfaction",
        "legend": "Resolution rate: resolved / calls with a resolution set. Satisfaction "
                  "rate: satisfied / follow-ups answered satisfied, fair or dissatisfied.",
        "period": "Period", "set": "With a resolution", "resolved": "Resolved",
        "referred": "Referred", "pending": "Pending", "unresolved": "Unresolved",
        "resolution_rate": "Resolution rate", "answers": "Satisfaction answers",
        "satisfied": "Satisfied", "unreachable": "Unreachable",
        "satisfaction_rate": "Satisfaction rate", "line": "Line", "agent": "Agent",
        "date": "Date", "none": "(none)", "not_answered": "(not answered)",
    },
    "zh": {
        "title": "解决率与满意率",
        "legend": "解决率：已解决 / 已登记处理结果的来电；"
                  "满意率：满意 / 回访中答复满意、一般或不满意的次数。",
        "period": "本期", "set": "已登记结果", "resolved": "已解决",
        "referred": "已转办", "pending": "办理中", "unresolved": "未解决",
        "resolution_rate": "解决率", "answers": "回访答复", "satisfied": "满意",
        "unreachable": "未联系上", "satisfaction_rate": "满意率", "line": "线路",
        "agent": "坐席", "date": "日期", "none": "（无）", "not_answered": "（未接听）",
    },
}
# The text report's narrower headers, in COLUMNS order.
TEXT_HEADER = ("set", "resolved", "referred", "pending", "unresolved", "resolution",
               "answers", "satisfied", "unreachable", "satisfaction")
COLUMNS = ("set", "resolved", "referred", "pending", "unresolved", "resolution_rate",
           "answers", "satisfied", "unreachable", "satisfaction_rate")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _cells(g: dict[str, Any]) -> list[str]:
    answers = g["satisfied"] + g["fair"] + g["dissatisfied"]
    return [str(g["resolutions_set"]), str(g["resolved"]), str(g["referred"]),
            str(g["resolution_pending"]), str(g["unresolved"]), _pct(g["resolution_rate"]),
            str(answers), str(g["satisfied"]), str(g["unreachable"]),
            _pct(g["satisfaction_rate"])]


def rows(report: dict[str, Any], lang: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(scope heading, name, figures): the period, each line, each agent, each day."""
    t = TEXT[lang]
    out = [(t["period"], report["date"] + ("" if report.get("period", "day") == "day"
                                           else f" – {report['last_date']}"),
            report["totals"])]
    out += [(t["line"], g["key"] or t["none"], g) for g in report["lines"]]
    out += [(t["agent"], (f"{g['agent_name']} ({g['key']})" if g.get("agent_name")
                          else g["key"]) or t["not_answered"], g) for g in report["agents"]]
    out += [(t["date"], d["date"], d) for d in report.get("days", ())]
    # A report built without these figures (an older JSON) has no section.
    return [row for row in out if "resolution_rate" in row[2]]


def text_section(report: dict[str, Any], table: Callable[[Sequence[str], Sequence[Sequence[str]]],
                                                         list[str]]) -> list[str]:
    """Lines for the text report (`table` lays out columns as the rest of it does)."""
    t = TEXT["en"]
    body = [[f"{scope.lower()} {name}", *_cells(g)] for scope, name, g in rows(report, "en")]
    if not body:
        return []
    return ["", t["title"], *table(["", *TEXT_HEADER], body), t["legend"]]


def html_section(report: dict[str, Any], lang: str, cell: str, num: str) -> str:
    """The HTML report's section: one table, inline styles (`cell`, `num`) only."""
    t = TEXT[lang]
    if not rows(report, lang):
        return ""
    head = "".join(f'<th style="{cell}text-align:left">{escape(h)}</th>'
                   for h in ("", *(t[c] for c in COLUMNS)))
    body = "".join(
        f'<tr><td style="{cell}">{escape(scope)} · {escape(name)}</td>'
        + "".join(f'<td style="{num}">{escape(v)}</td>' for v in _cells(g)) + "</tr>"
        for scope, name, g in rows(report, lang))
    return (f'<h2 style="font-size:16px;margin:20px 0 6px">{escape(t["title"])}</h2>'
            f'<p style="margin:0 0 6px;color:#4a5568;font-size:12px">'
            f'{escape(t["legend"])}</p>'
            f'<table id="resolution" style="border-collapse:collapse;font-size:13px">'
            f'<tr>{head}</tr>{body}</table>')
