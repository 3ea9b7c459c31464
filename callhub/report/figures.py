"""A period's figures per line and agent (`build_report`) and their renderings.

Shared by `callhub report` and the daemon's mailer (callhub/report/mailer.py).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import Any

from callhub.argtypes import count
from callhub.config import Settings
from callhub.report.periods import Period, period_containing
from callhub.report.resolution import text_section
from callhub.spreadsheet import safe_text
from callhub.store import resolution_stats, stats
from callhub.store.db import Database

FORMATS = ("text", "csv", "json", "html")
FIGURES = (*stats.FIGURES_DOC, *resolution_stats.RESOLUTION_FIGURES_DOC)
# A line row's own targets, after the figures (empty on the other rows).
TARGET_COLUMNS = ("target_rings", "answer_rate_target")


def day_query(settings: Settings, day: date, group_by: str | None, rings: int = 3,
              pbx: str | None = None) -> stats.StatsQuery:
    """The StatsQuery of GET /api/v1/stats?from=DAY&group_by=... with the API's defaults."""
    tz = settings.tz
    start = datetime.combine(day, time(), tzinfo=tz)
    return stats.StatsQuery(start=start, end=start + timedelta(days=1), group_by=group_by,
                            rings=rings, seconds=20.0,
                            exclude_short_abandons=settings.stats_exclude_short_abandons,
                            tz=tz, pbx=pbx, targets=settings.line_targets(pbx))


def period_query(settings: Settings, period: Period, group_by: str | None, rings: int = 3,
                 pbx: str | None = None) -> stats.StatsQuery:
    """The StatsQuery of GET /api/v1/stats over the period's local days."""
    start, end = period.bounds(settings.tz)
    return stats.StatsQuery(start=start, end=end, group_by=group_by, rings=rings, seconds=20.0,
                            exclude_short_abandons=settings.stats_exclude_short_abandons,
                            tz=settings.tz, pbx=pbx, targets=settings.line_targets(pbx))


async def build_report(db: Database, settings: Settings, day: date, *, rings: int = 3,
                       pbx: str | None = None, period: str = "day") -> dict[str, Any]:
    """The totals of the `period` holding `day`, per line and per agent, as /stats gives
    them; a week or a month also has its calls per day (`days`)."""
    span = period_containing(period, day)
    async with db.connection() as conn:
        totals = await stats.compute(conn, period_query(settings, span, None, rings, pbx))
        lines = await stats.compute(conn, period_query(settings, span, "line", rings, pbx))
        agents = await stats.compute(conn, period_query(settings, span, "agent", rings, pbx))
        per_day = (await stats.compute(conn, period_query(settings, span, "day", rings, pbx))
                   if period != "day" else None)
        for result, group_by in ((totals, None), (lines, "line"), (agents, "agent"),
                                 (per_day, "day")):
            if result is not None:
                await resolution_stats.compute_into(
                    conn, period_query(settings, span, group_by, rings, pbx), result)
    q = period_query(settings, span, None, rings, pbx)
    report: dict[str, Any] = {
        "date": span.first.isoformat(), "period": period, "last_date": span.last.isoformat(),
        "timezone": settings.timezone, "from": q.start.isoformat(),
        "to": q.end.isoformat(), "rings": rings, "seconds": q.seconds, "pbx": pbx,
        "short_abandons_excluded": q.exclude_short_abandons,
        "totals": totals["totals"], "lines": lines["groups"], "agents": agents["groups"],
        "default_target": totals["default_target"], "line_targets": totals["line_targets"],
    }
    if per_day is not None:
        found = {str(g["key"])[:10]: g for g in per_day["groups"]}
        report["days"] = [{"date": d.isoformat(), "inbound": found[d.isoformat()]["inbound"]
                           if d.isoformat() in found else 0,
                           "answered": found[d.isoformat()]["answered"]
                           if d.isoformat() in found else 0}
                          for d in span.days]
        add_day_rates(report["days"], per_day["groups"])
    return report


def add_day_rates(days: list[dict[str, Any]], groups: list[dict[str, Any]]) -> None:
    """Each day's resolution and satisfaction figures (callhub/store/resolution_stats.py)."""
    found = {str(g["key"])[:10]: g for g in groups}
    for day in days:
        figures = found.get(day["date"]) or resolution_stats.empty()
        day.update({name: figures[name] for name in resolution_stats.RESOLUTION_FIGURES_DOC})


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, ensure_ascii=False, indent=2) + "\n"


def to_csv(report: dict[str, Any]) -> str:
    """One row per scope; UTF-8 with a BOM, as the API's CSV, so Excel shows 李娜 as 李娜."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["date", "scope", "key", "name", *FIGURES, *TARGET_COLUMNS])
    rows: list[tuple[str, str | None, str | None, dict[str, Any]]] = [
        (report.get("period", "day"), None, None, report["totals"])]  # day, week or month
    rows += [("line", g["key"], None, g) for g in report["lines"]]
    rows += [("agent", g["key"], g.get("agent_name"), g) for g in report["agents"]]
    for scope, key, name, figures in rows:
        writer.writerow([report["date"], scope, _cell(key), _cell(name),
                         *(_cell(figures[f]) for f in FIGURES),
                         *(_cell(figures.get(c)) for c in TARGET_COLUMNS)])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a figure (negative too) stays a number
    return safe_text(str(value))  # a name must not run as a spreadsheet formula


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(_width(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0] + " " * (widths[0] - _width(row[0]))]
        cells += [" " * (w - _width(c)) + c for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def _width(text: str) -> int:
    """Display width: CJK characters take two columns in a terminal or a mail font."""
    return sum(2 if "\u2e80" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef" else 1
               for ch in text)


def to_text(report: dict[str, Any]) -> str:
    t = report["totals"]
    n = report["rings"]
    lines = [f"callhub {PERIOD_WORD[report.get('period', 'day')]} report {report['date']}"
             + (f" to {report['last_date']}" if report.get("period", "day") != "day" else "")
             + f" ({report['timezone']})"
             + (f", pbx {report['pbx']}" if report["pbx"] else ""), ""]
    rows = [
        ["Inbound calls", str(t["inbound"]), ""],
        ["Answered", str(t["answered"]), _pct(t["answer_rate"])],
        [f"Answered within {count(n, 'ring')}", str(t["answered_within_rings"]),
         _pct(t["within_rings_rate"])],
        [f"Answered within {report['seconds']:g} s", str(t["answered_within_seconds"]),
         _pct(t["service_level"])],
        ["Missed", str(t["missed"]), ""],
        ["Abandoned", str(t["abandoned"]), ""],
        ["Short abandons" + (" (left out above)" if report["short_abandons_excluded"] else ""),
         str(t["short_abandons"]), ""],
        ["Outbound calls", str(t["outbound"]), ""],
        ["Callbacks pending", str(t["pending_callbacks"]), ""],
        ["Callbacks handled", str(t["handled_callbacks"]),
         "median " + _minutes(t["median_time_to_callback_seconds"])],
        ["Agent hung up first", "", _pct(t["agent_hangup_first_rate"])],
    ]
    if "within_target_rate" in t:  # each call against its own line's ring target
        rows.insert(3, ["Answered within each line's target", str(t["answered_within_target"]),
                        _pct(t["within_target_rate"])])
    lines += _table(["", "count", "rate"], rows)
    lines += ["", "Per line"]
    lines += _table(
        ["line", "inbound", "answered", "answer", f"<={count(n, 'ring')}", "missed", "abandoned",
         "pending", "median callback"],
        [[g["key"] or "(none)", str(g["inbound"]), str(g["answered"]), _pct(g["answer_rate"]),
          _pct(g["within_rings_rate"]), str(g["missed"]), str(g["abandoned"]),
          str(g["pending_callbacks"]), _minutes(g["median_time_to_callback_seconds"])]
         for g in report["lines"]])
    if report.get("line_targets"):
        lines += ["", "Per line against its own target"]
        lines += target_table(report)
    lines += ["", "Per agent"]
    lines += _table(
        ["agent", "answered", f"<={count(n, 'ring')} of answered", "avg ring",
         "agent hung up first", "outbound"],
        [[(f"{g['agent_name']} ({g['key']})" if g.get("agent_name") else g["key"])
          or "(not answered)", str(g["answered"]), _pct(g["within_rings_rate_answered"]),
          _num(g["avg_ring_seconds"], " s"), _pct(g["agent_hangup_first_rate"]),
          str(g["outbound"])] for g in report["agents"]])
    lines += text_section(report, _table)
    return "\n".join(lines) + "\n"


def target_text(target_rings: int, answer_rate_target: float) -> str:
    """A line's targets in a few characters: `<=5 rings, >=80 %`."""
    return f"<={count(target_rings, 'ring')}, >={answer_rate_target * 100:g} %"


def target_table(report: dict[str, Any]) -> list[str]:
    """Each line's targets, calls and within-target rate, and whether it met its target."""
    met = {True: "met", False: "not met", None: "-"}
    return _table(
        ["line", "target", "inbound", "within target", "rate", ""],
        [[t["line"], target_text(t["target_rings"], t["answer_rate_target"]), str(t["inbound"]),
          str(t["answered_within_target"]), _pct(t["within_target_rate"]), met[t["target_met"]]]
         for t in report.get("line_targets", [])])


PERIOD_WORD = {"day": "daily", "week": "weekly", "month": "monthly"}


def render(report: dict[str, Any], fmt: str, lang: str = "zh") -> str:
    """The report in one of FORMATS (`lang` is the HTML page's language)."""
    if fmt == "html":
        from callhub.report.html import to_html  # the page's code only when asked for
        return to_html(report, lang)
    return {"text": to_text, "csv": to_csv, "json": to_json}[fmt](report)


