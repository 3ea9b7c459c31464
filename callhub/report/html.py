"""The report as one self-contained HTML page that reads in a mail client.

Mail clients strip <style> blocks, scripts and remote images, so every style
is inline and the charts are inline SVG bars: answer rate and within-N-rings
rate per line and per agent, and calls per day for a week or a month. No
JavaScript, no external resource. Text is Chinese or English (`TEXT`).
"""

from __future__ import annotations

from html import escape
from typing import Any

from callhub.argtypes import count
from callhub.report.resolution import html_section

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title.day": "callhub daily report", "title.week": "callhub weekly report",
        "title.month": "callhub monthly report", "timezone": "Time zone",
        "inbound": "Inbound calls", "answered": "Answered", "answer_rate": "Answer rate",
        "within": "Answered within {rings}", "missed": "Missed", "abandoned": "Abandoned",
        "outbound": "Outbound calls", "pending": "Callbacks pending",
        "handled": "Callbacks handled", "per_line": "Per line", "per_agent": "Per agent",
        "per_day": "Calls per day", "line": "Line", "agent": "Agent", "none": "(none)",
        "not_answered": "(not answered)", "within_answered": "Within {rings} of answered",
        "legend": "Bars: answer rate (dark) and the rate within {rings} (light), 0–100 %",
        "legend_day": "Bars: inbound (light) and answered (dark)", "figure": "Figure",
        "value": "Value", "date": "Date",
        "per_line_target": "Per line against its own target",
        "within_target": "Answered within each line's target", "target": "Target",
        "target_text": "≤{rings}, ≥{rate}", "within_target_n": "Within target",
        "within_target_rate": "Rate", "met": "met", "not_met": "not met",
        "legend_target": "Bars: each line's within-target rate; the mark is its answer-rate "
                         "target",
    },
    "zh": {
        "title.day": "callhub 日报", "title.week": "callhub 周报",
        "title.month": "callhub 月报", "timezone": "时区",
        "inbound": "呼入电话", "answered": "已接听", "answer_rate": "接听率",
        "within": "{n}声内接听", "missed": "未接", "abandoned": "来电方挂断",
        "outbound": "呼出电话", "pending": "待回拨", "handled": "已回拨",
        "per_line": "按线路", "per_agent": "按坐席", "per_day": "每日来电",
        "line": "线路", "agent": "坐席", "none": "（无）", "not_answered": "（未接听）",
        "within_answered": "接听中{n}声内占比",
        "legend": "柱：接听率（深色）与{n}声内接听占比（浅色），0–100 %",
        "legend_day": "柱：呼入（浅色）与已接听（深色）", "figure": "指标", "value": "数值",
        "date": "日期",
        "per_line_target": "各线路对照自身目标", "within_target": "各线路目标声数内接听",
        "target": "目标", "target_text": "{n}声内，≥{rate}", "within_target_n": "目标内接听",
        "within_target_rate": "比率", "met": "达标", "not_met": "未达标",
        "legend_target": "柱：各线路目标声数内接听率；竖线为该线路的接听率目标",
    },
}

DARK, LIGHT = "#2b6cb0", "#90cdf4"
CELL = "padding:4px 8px;border-bottom:1px solid #e2e8f0;"
NUM = CELL + "text-align:right;"


def _rings(template: str, n: int, **more: str) -> str:
    """A TEXT template with a ring count: `{n}` the number (zh: `3声内`), `{rings}` the
    number and its noun (en: `1 ring`, `3 rings`; "within 1 rings" was a review's find)."""
    return template.format(n=n, rings=count(n, "ring"), **more)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _bar(value: float | None, color: str, width: int = 160) -> str:
    """One horizontal bar, 0..1 of `width` pixels, as inline SVG."""
    filled = 0 if value is None else round(max(0.0, min(1.0, value)) * width)
    return (f'<svg width="{width}" height="10" '
            f'role="img" aria-label="{_pct(value)}" style="display:block">'
            f'<rect width="{width}" height="10" fill="#edf2f7"/>'
            f'<rect width="{filled}" height="10" fill="{color}"/></svg>')


def _rate_table(t: dict[str, str], title: str, first: str, rows: list[tuple[str, dict[str, Any]]],
                n: int, answered_key: str = "within_rings_rate", header: str = "within") -> str:
    """A row per group with its figures and two bars; an agent's within-N rate is of the
    calls it answered (as in the text report), a line's of its inbound calls."""
    head = "".join(f'<th style="{CELL}text-align:left">{escape(h)}</th>' for h in (
        first, t["inbound"], t["answered"], t["answer_rate"], _rings(t[header], n), ""))
    body = []
    for name, g in rows:
        body.append(
            f'<tr><td style="{CELL}">{escape(name)}</td>'
            f'<td style="{NUM}">{g["inbound"]}</td><td style="{NUM}">{g["answered"]}</td>'
            f'<td style="{NUM}">{_pct(g["answer_rate"])}</td>'
            f'<td style="{NUM}">{_pct(g[answered_key])}</td>'
            f'<td style="{CELL}">{_bar(g["answer_rate"], DARK)}'
            f'{_bar(g[answered_key], LIGHT)}</td></tr>')
    return (f'<h2 style="font-size:16px;margin:20px 0 6px">{escape(title)}</h2>'
            f'<p style="margin:0 0 6px;color:#4a5568;font-size:12px">'
            f'{escape(_rings(t["legend"], n))}</p>'
            f'<table style="border-collapse:collapse;font-size:13px">'
            f'<tr>{head}</tr>{"".join(body)}</table>')


def _target_bar(value: float | None, target: float, width: int = 160) -> str:
    """A line's within-target rate as a bar, with its answer-rate target as a mark."""
    filled = 0 if value is None else round(max(0.0, min(1.0, value)) * width)
    mark = round(max(0.0, min(1.0, target)) * width)
    color = DARK if value is not None and value >= target else "#c53030"
    return (f'<svg width="{width}" height="10" role="img" aria-label="{_pct(value)}" '
            f'style="display:block"><rect width="{width}" height="10" fill="#edf2f7"/>'
            f'<rect width="{filled}" height="10" fill="{color}"/>'
            f'<rect x="{max(mark - 1, 0)}" width="2" height="10" fill="#1a202c"/></svg>')


def _target_table(t: dict[str, str], targets: list[dict[str, Any]]) -> str:
    """Each line against its own ring and answer-rate targets, and whether it met them."""
    head = "".join(f'<th style="{CELL}text-align:left">{escape(h)}</th>' for h in (
        t["line"], t["target"], t["inbound"], t["within_target_n"], t["within_target_rate"],
        "", ""))
    body = []
    for g in targets:
        target = _rings(t["target_text"], g["target_rings"],
                        rate=_pct(g["answer_rate_target"]))
        met = {True: t["met"], False: t["not_met"], None: "-"}[g["target_met"]]
        body.append(
            f'<tr><td style="{CELL}">{escape(g["line"])}</td>'
            f'<td style="{CELL}">{escape(target)}</td>'
            f'<td style="{NUM}">{g["inbound"]}</td>'
            f'<td style="{NUM}">{g["answered_within_target"]}</td>'
            f'<td style="{NUM}">{_pct(g["within_target_rate"])}</td>'
            f'<td style="{CELL}">{escape(met)}</td>'
            f'<td style="{CELL}">{_target_bar(g["within_target_rate"], g["answer_rate_target"])}'
            f'</td></tr>')
    return (f'<h2 style="font-size:16px;margin:20px 0 6px">{escape(t["per_line_target"])}</h2>'
            f'<p style="margin:0 0 6px;color:#4a5568;font-size:12px">'
            f'{escape(t["legend_target"])}</p>'
            f'<table style="border-collapse:collapse;font-size:13px" id="line-targets">'
            f'<tr>{head}</tr>{"".join(body)}</table>')


def _days_chart(t: dict[str, str], days: list[dict[str, Any]]) -> str:
    """Calls per day as vertical bars (inbound light, answered dark) with the date below."""
    top = max([d["inbound"] for d in days] + [1])
    step, height = 22, 120
    width = step * len(days)
    bars = []
    for i, d in enumerate(days):
        x = i * step + 3
        h_in = round(d["inbound"] / top * height)
        h_ans = round(d["answered"] / top * height)
        bars.append(
            f'<rect x="{x}" y="{height - h_in}" width="16" height="{h_in}" fill="{LIGHT}">'
            f'<title>{d["date"]}: {d["inbound"]}</title></rect>'
            f'<rect x="{x + 4}" y="{height - h_ans}" width="8" height="{h_ans}" fill="{DARK}"/>'
            f'<text x="{x + 8}" y="{height + 12}" font-size="9" text-anchor="middle" '
            f'fill="#4a5568">{d["date"][8:10]}</text>')
    svg = (f'<svg width="{width}" height="{height + 16}" '
           f'role="img" aria-label="{escape(t["per_day"])}">{"".join(bars)}</svg>')
    rows = "".join(f'<tr><td style="{CELL}">{d["date"]}</td><td style="{NUM}">{d["inbound"]}'
                   f'</td><td style="{NUM}">{d["answered"]}</td></tr>' for d in days)
    return (f'<h2 style="font-size:16px;margin:20px 0 6px">{escape(t["per_day"])}</h2>'
            f'<p style="margin:0 0 6px;color:#4a5568;font-size:12px">'
            f'{escape(t["legend_day"])}</p>{svg}'
            f'<table style="border-collapse:collapse;font-size:13px;margin-top:8px">'
            f'<tr><th style="{CELL}text-align:left">{escape(t["date"])}</th>'
            f'<th style="{CELL}">{escape(t["inbound"])}</th>'
            f'<th style="{CELL}">{escape(t["answered"])}</th></tr>{rows}</table>')


def title(report: dict[str, Any], lang: str) -> str:
    """The page's (and the mail's) title: kind, dates and time zone."""
    t = TEXT[lang]
    kind = report.get("period", "day")
    dates = report["date"] + ("" if kind == "day" else f" – {report['last_date']}")
    return f"{t['title.' + kind]} {dates}" + (f" ({report['pbx']})" if report["pbx"] else "")


def to_html(report: dict[str, Any], lang: str = "zh") -> str:
    """The whole page (UTF-8, inline styles and SVG only)."""
    t = TEXT[lang]
    n = report["rings"]
    tot = report["totals"]
    summary = [
        (t["inbound"], str(tot["inbound"])), (t["answered"], str(tot["answered"])),
        (t["answer_rate"], _pct(tot["answer_rate"])),
        (_rings(t["within"], n), _pct(tot["within_rings_rate"])),
        (t["missed"], str(tot["missed"])), (t["abandoned"], str(tot["abandoned"])),
        (t["outbound"], str(tot["outbound"])), (t["pending"], str(tot["pending_callbacks"])),
        (t["handled"], str(tot["handled_callbacks"])),
    ]
    if "within_target_rate" in tot:
        summary.append((t["within_target"], _pct(tot["within_target_rate"])))
    summary_rows = "".join(f'<tr><td style="{CELL}">{escape(k)}</td><td style="{NUM}">{v}</td>'
                           f'</tr>' for k, v in summary)
    lines = [(g["key"] or t["none"], g) for g in report["lines"]]
    agents = [((f"{g['agent_name']} ({g['key']})" if g.get("agent_name") else g["key"])
               or t["not_answered"], g) for g in report["agents"]]
    parts = [
        f'<h1 style="font-size:20px;margin:0 0 4px">{escape(title(report, lang))}</h1>',
        f'<p style="margin:0 0 12px;color:#4a5568">{escape(t["timezone"])}: '
        f'{escape(report["timezone"])}</p>',
        f'<table style="border-collapse:collapse;font-size:14px">'
        f'<tr><th style="{CELL}text-align:left">{escape(t["figure"])}</th>'
        f'<th style="{CELL}">{escape(t["value"])}</th></tr>{summary_rows}</table>',
        _rate_table(t, t["per_line"], t["line"], lines, n),
        *([_target_table(t, report["line_targets"])] if report.get("line_targets") else []),
        _rate_table(t, t["per_agent"], t["agent"], agents, n,
                    "within_rings_rate_answered", "within_answered"),
    ]
    if report.get("days"):
        parts.append(_days_chart(t, report["days"]))
    parts.append(html_section(report, lang, CELL, NUM))
    html_lang = "zh-CN" if lang == "zh" else "en"
    return (f'<!DOCTYPE html>\n<html lang="{html_lang}"><head><meta charset="utf-8">'
            f'<title>{escape(title(report, lang))}</title></head>'
            f'<body style="margin:0;padding:16px;font-family:Helvetica,Arial,'
            f'\'PingFang SC\',\'Microsoft YaHei\',sans-serif;color:#1a202c;background:#ffffff">'
            f'{"".join(parts)}</body></html>\n')
