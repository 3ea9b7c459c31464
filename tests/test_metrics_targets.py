"""Each line against its own ring target: /metrics, and the shipped alert rule under promtool.

Calls are observed by a real `CallhubMetrics` built from settings with
per-line targets, /metrics is scraped over HTTP, and the scraped series feed
Prometheus's own rule engine (`promtool test rules`) with deploy's alerts.yml:
the alert must fire for the line below its own target and not for the line
that meets its own (laxer) target though it would fail a fixed N = 3.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from metrics_fixtures import Scrape, ScrapeFn, make_record

from callhub.config import PbxConfig, Settings
from callhub.config.targets import LineTable
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
NOW = 1_800_000_000.0
LINES = {"4008001000": "front-desk", "4008005000": "petition", "4008007000": "repairs"}
RATIO = "callhub_answered_within_target_ratio"
CALLS = "callhub_answered_within_target_calls"


def settings() -> Settings:
    return replace(Settings(), pbxs=(PbxConfig("main", lines=LINES),), line_tables={
        "petition": LineTable(target_rings=5, answer_rate_target=0.8),
        "front-desk": LineTable(target_rings=3, answer_rate_target=0.9)})


def calls(line: str | None, rings: list[int | None], ago: float = 600) -> list[CallRecord]:
    """Inbound calls on `line`, answered after `rings` rings (None: missed), `ago` s ago."""
    return [make_record(arrived_at=NOW - ago + i, line=line, rings=r) if r is not None else
            make_record(arrived_at=NOW - ago + i, line=line, outcome="missed",
                        reason="not_answered", answered_at=None, rings=6)
            for i, r in enumerate(rings)]


FRONT = [1, 2, 3, 4, 4, 5, None, 2]       # 4 of 8 within 3 rings: below 0.9
PETITION = [2, 4, 5, 5, 4, 3, 6, 1, 5, 5]  # 9 of 10 within 5 (4 of 10 within 3): meets 0.8


def observed() -> CallhubMetrics:
    metrics = CallhubMetrics.from_settings(settings(), clock=lambda: NOW)
    for record in [*calls("front-desk", FRONT), *calls("petition", PETITION),
                   *calls("4008009999", [4, 1]),  # an unmapped DID: line "other", 3 rings
                   *calls("repairs", [7], ago=7200)]:  # two hours ago: today, not 1 h
        metrics.observe_call(record)
    return metrics


def within(rings: list[int | None], target: int) -> float:
    return sum(r is not None and r <= target for r in rings) / len(rings)


async def test_each_line_has_its_within_target_ratio_and_its_targets(
        scrape_metrics: ScrapeFn) -> None:
    scrape = await scrape_metrics(observed().registry)
    for line, rings, target in (("front-desk", FRONT, 3), ("petition", PETITION, 5),
                                ("other", [4, 1], 3)):
        for window in ("15m", "1h", "today"):
            assert scrape.value(RATIO, line=line, window=window) == pytest.approx(
                within(rings, target)), (line, window)
            assert scrape.value(CALLS, line=line, window=window) == len(rings)
        assert scrape.value("callhub_line_target_rings", line=line) == target
    assert scrape.value("callhub_line_answer_rate_target", line="petition") == 0.8
    assert scrape.value("callhub_line_answer_rate_target", line="front-desk") == 0.9
    # Unconfigured lines: 3 rings and the desk's within-rings target.
    assert scrape.value("callhub_line_answer_rate_target", line="repairs") == 0.9
    # Two hours ago is in today's window only; a window without calls has no ratio.
    assert scrape.value(RATIO, line="repairs", window="1h") is None
    assert scrape.value(CALLS, line="repairs", window="1h") == 0
    assert scrape.value(RATIO, line="repairs", window="today") == 0.0
    # The fixed-N ratio is still there, per PBX, with N = 3 for every line.
    everything = [*FRONT, *PETITION, 4, 1, 7]
    assert scrape.value("callhub_answered_within_rings_ratio", pbx="main", rings="3",
                        window="today") == pytest.approx(within(everything, 3))


def series(scrape: Scrape, names: tuple[str, ...]) -> list[dict[str, str]]:
    """Scraped gauges as promtool input series, constant for two hours."""
    out = []
    for (name, labels), value in sorted(scrape.samples.items()):
        if name in names:
            selector = ",".join(f'{k}="{v}"' for k, v in labels)
            out.append({"series": f"{name}{{{selector}}}", "values": f"{value:g}+0x120"})
    return out


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package 'prometheus')")
async def test_the_alert_holds_each_line_to_its_own_target(scrape_metrics: ScrapeFn,
                                                           tmp_path: Path) -> None:
    scrape = await scrape_metrics(observed().registry)
    names = (RATIO, CALLS, "callhub_line_target_rings", "callhub_line_answer_rate_target")
    front = within(FRONT, 3)
    fired: dict[str, Any] = {
        "exp_labels": {"alertname": "CallhubLineBelowAnswerTarget", "severity": "warning",
                       "line": "front-desk"},
        "exp_annotations": {
            "summary": f"front-desk: only {front * 100:.4g}% of calls answered within 3 "
                       "rings (1 h)",
            "description": "The line has been below its answer-rate target of 90% for 30 "
                           "minutes."}}
    spec = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series(scrape, names),
        "alert_rule_test": [
            # Not yet: the condition must hold for 30 minutes.
            {"eval_time": "20m", "alertname": "CallhubLineBelowAnswerTarget",
             "exp_alerts": []},
            # front-desk (4 of 8 within 3 rings, target 90 %) fires; petition (9 of 10
            # within its 5, target 80 %) does not, though only 4 of 10 were within 3;
            # "other" is below target but has 2 calls, under the 5 the rule asks for.
            {"eval_time": "40m", "alertname": "CallhubLineBelowAnswerTarget",
             "exp_alerts": [fired]},
        ]}]}
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        "promtool", "test", "rules", str(path), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    assert within(PETITION, 3) < 0.8 <= within(PETITION, 5)  # the case is the one it says
