"""Ground truth end to end: recorded traces -> callhub -> CallhubMetrics -> GET /metrics.

The traces reach callhub two ways: straight through the correlator, and as a
running ingest sees them (an AMI simulator sends them over loopback TCP to
PbxIngest, which logs in, resyncs and counts events).

Every expected figure is derived from the traces' `.json` `expected` blocks
(never written down here): call counts by outcome, histogram buckets (with
`rings` lists and `tolerance.seconds` turned into a lower and an upper bound),
attempts per agent, and the windowed answer-within-3-rings ratios, which are
checked minute by minute while an injected clock walks across the recordings
and across local midnight.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from metrics_fixtures import Scrape, ScrapeFn
from traces_fixtures import all_traces

from callhub.ami.groundtruth import pbx_from_truth
from callhub.ami.ingest import PbxIngest
from callhub.ami.replay import replay_files
from callhub.ami.simulator import AmiSimulator
from callhub.config import PbxConfig, settings_from_mapping
from callhub.metrics.collectors import OTHER, RING_BUCKETS, SECONDS_BUCKETS, CallhubMetrics
from callhub.records import CallRecord

# America/St_Johns is UTC-3:30 in November: its midnight (03:30 UTC) falls between the
# two recording sessions, so "today" changes while the clock walks.
TIMEZONE = "America/St_Johns"


@dataclass(frozen=True)
class Truth:
    """One expected call, with the PBX it was recorded on."""

    pbx: str
    call: dict[str, Any]
    tolerance: float

    @property
    def arrived(self) -> float:
        # A linkedid is the first channel's uniqueid: "<epoch seconds>.<sequence>".
        return float(self.call["linkedid"].split(".")[0])

    @property
    def rings(self) -> list[int]:
        rings = self.call["rings"]
        return rings if isinstance(rings, list) else [rings]

    def seconds(self, key: str) -> tuple[float, float]:
        value = float(self.call[key])
        return value - self.tolerance, value + self.tolerance

    @property
    def inbound(self) -> bool:
        return bool(self.call["direction"] == "inbound")

    @property
    def answered(self) -> bool:
        return bool(self.call["outcome"] == "answered")


@dataclass
class Traces:
    """The recordings grouped by the PBX they were made on, with their ground truth."""

    configs: dict[str, dict[str, Any]]
    pbxs: dict[str, PbxConfig]
    files: dict[str, list[Path]]
    truths: list[Truth]


def load() -> Traces:
    traces = Traces({}, {}, {}, [])
    for trace in all_traces():
        data = json.loads(trace.with_suffix(".json").read_text(encoding="utf-8"))
        expected = data["expected"]
        pbx = pbx_from_truth(data)
        traces.configs.setdefault(pbx.name, expected["config"])
        traces.pbxs.setdefault(pbx.name, pbx)
        traces.files.setdefault(pbx.name, []).append(trace)
        tolerance = float(expected.get("tolerance", {}).get("seconds", 0.0))
        traces.truths.extend(Truth(pbx.name, call, tolerance) for call in expected["calls"])
    return traces


async def replay_directly(traces: Traces, metrics: CallhubMetrics) -> list[CallRecord]:
    """Records straight from the correlator (`callhub replay`); `metrics` sees only them."""
    return [r for name, files in traces.files.items()
            for r in replay_files(files, traces.pbxs[name])]


async def replay_over_ami(traces: Traces, metrics: CallhubMetrics) -> list[CallRecord]:
    """Records of a running ingest: each PBX's traces sent by an AMI simulator over
    loopback TCP to callhub's PbxIngest, which counts AMI events into `metrics`."""
    records: list[CallRecord] = []
    for name, files in traces.files.items():
        want = len(records) + sum(1 for t in traces.truths if t.pbx == name)
        done = asyncio.Event()

        def on_record(record: CallRecord, want: int = want, done: asyncio.Event = done) -> None:
            records.append(record)
            if len(records) >= want:
                done.set()

        async with AmiSimulator(username="callhub", secret="ami-secret-1") as sim:
            pbx = replace(traces.pbxs[name], host="127.0.0.1", port=sim.port,
                          username="callhub", secret="ami-secret-1")
            ingest = PbxIngest(pbx, on_record, metrics=metrics)
            await ingest.start()
            try:
                await ingest.wait_connected(10.0)
                for path in files:
                    await sim.replay(path, speed=None)
                await asyncio.wait_for(done.wait(), 30.0)
                assert metrics.registry.get_sample_value(
                    "callhub_ami_connected", {"pbx": name}) == 1
                # Every event the server wrote, plus its FullyBooted after the login.
                assert metrics.registry.get_sample_value(
                    "callhub_ami_events_total", {"pbx": name}) == (
                    sim.events_sent + sim.stats.logins)
            finally:
                await ingest.stop()
        assert metrics.registry.get_sample_value("callhub_ami_connected", {"pbx": name}) == 0
    return records


def bounds(truths: list[Truth], lo_hit: Any, hi_hit: Any) -> tuple[int, int]:
    """(calls certainly counted, calls possibly counted)."""
    return sum(1 for t in truths if lo_hit(t)), sum(1 for t in truths if hi_hit(t))


def assert_between(value: float | None, lo: int, hi: int, what: str) -> None:
    assert value is not None, f"{what}: missing from /metrics"
    assert lo <= value <= hi, f"{what}: {value} not in [{lo}, {hi}]"


def check_totals(scrape: Scrape, truths: list[Truth]) -> None:
    for pbx in {t.pbx for t in truths}:
        mine = [t for t in truths if t.pbx == pbx]
        outcomes = Counter((t.call["direction"], t.call["outcome"]) for t in mine)
        for (direction, outcome), n in outcomes.items():
            assert scrape.total("callhub_calls_total", pbx=pbx, direction=direction,
                                outcome=outcome) == n, (pbx, direction, outcome)
        assert scrape.total("callhub_calls_total", pbx=pbx) == len(mine)
        reasons = Counter((t.call["outcome"], t.call["reason"]) for t in mine
                          if t.inbound and t.call["reason"] is not None)
        for (outcome, reason), n in reasons.items():
            assert scrape.value("callhub_call_reasons_total", pbx=pbx, outcome=outcome,
                                reason=reason) == n
        assert scrape.total("callhub_call_reasons_total", pbx=pbx) == sum(reasons.values())
        assert scrape.total("callhub_short_abandons_total", pbx=pbx) == sum(
            1 for t in mine if t.call["short_abandon"])

        answered_in = [t for t in mine if t.inbound and t.answered]
        for le in RING_BUCKETS:
            lo, hi = bounds(answered_in, lambda t, le=le: max(t.rings) <= le,
                            lambda t, le=le: min(t.rings) <= le)
            assert_between(scrape.value("callhub_call_rings_bucket", pbx=pbx, le=f"{le:.1f}"),
                           lo, hi, f"{pbx} rings le={le}")
        assert scrape.value("callhub_call_rings_bucket", pbx=pbx, le="+Inf") == len(answered_in)

        inbound = [t for t in mine if t.inbound]
        answered = [t for t in mine if t.answered]
        for name, key, calls in (("callhub_call_ring_seconds", "ring_seconds", inbound),
                                 ("callhub_call_talk_seconds", "talk_seconds", answered)):
            for le in SECONDS_BUCKETS:
                lo, hi = bounds(calls, lambda t, k=key, le=le: t.seconds(k)[1] <= le,
                                lambda t, k=key, le=le: t.seconds(k)[0] <= le)
                assert_between(scrape.value(f"{name}_bucket", pbx=pbx, le=f"{le:.1f}"),
                               lo, hi, f"{pbx} {key} le={le}")
            assert scrape.value(f"{name}_count", pbx=pbx) == len(calls)
            lo_sum = sum(t.seconds(key)[0] for t in calls)
            hi_sum = sum(t.seconds(key)[1] for t in calls)
            assert_between(scrape.value(f"{name}_sum", pbx=pbx), math.floor(lo_sum),
                           math.ceil(hi_sum), f"{pbx} {key} sum")
        assert scrape.value("callhub_call_wait_seconds_count", pbx=pbx) == len(inbound)

    # DESIGN.md defines attempts on inbound calls only: an outbound call offers nobody.
    attempts = Counter((a["interface"], a["result"]) for t in truths if t.inbound
                       for a in t.call["attempts"])
    for (agent, result), n in attempts.items():
        assert scrape.value("callhub_agent_attempts_total", agent=agent, result=result) == n
    assert scrape.total("callhub_agent_attempts_total") == sum(attempts.values())
    assert scrape.total("callhub_agent_attempts_total", agent=OTHER) == 0


def expected_windows(truths: list[Truth], finished: set[str], now: float,
                     ) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(pbx, window) -> (calls counted, certainly within 3 rings, possibly within 3 rings)."""
    midnight = datetime.fromtimestamp(now, ZoneInfo(TIMEZONE)).replace(
        hour=0, minute=0, second=0, microsecond=0).timestamp()
    starts = {"15m": now - 15 * 60, "1h": now - 3600, "today": midnight}
    out = {}
    for pbx in {t.pbx for t in truths}:
        for window, start in starts.items():
            counted = [t for t in truths if t.pbx == pbx and t.inbound
                       and t.call["linkedid"] in finished and start <= t.arrived <= now
                       and not t.call["short_abandon"]]
            lo, hi = bounds(counted, lambda t: t.answered and max(t.rings) <= 3,
                            lambda t: t.answered and min(t.rings) <= 3)
            out[(pbx, window)] = (len(counted), lo, hi)
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("source", [replay_directly, replay_over_ami],
                         ids=["correlator", "ami-over-tcp"])
async def test_replayed_traces_scrape_to_the_ground_truth(
        scrape_metrics: ScrapeFn,
        source: Callable[[Traces, CallhubMetrics], Awaitable[list[CallRecord]]]) -> None:
    traces = load()
    truths = traces.truths
    clock = Clock()
    settings = settings_from_mapping({"timezone": TIMEZONE,
                                      "pbx": list(traces.configs.values())})
    assert settings.stats_exclude_short_abandons
    metrics = CallhubMetrics.from_settings(settings, clock=clock)
    records = await source(traces, metrics)
    assert sorted(r.linkedid for r in records) == sorted(t.call["linkedid"] for t in truths)

    # Calls finish in time order, as in a live run; the clock walks minute by minute
    # from the first arrival to an hour after the last call, and at every whole minute
    # the windows on /metrics must equal the ground truth of the calls finished so far.
    pending = sorted(records, key=lambda r: r.ended_at)
    finished: set[str] = set()
    first = min(r.arrived_at for r in records)
    last = max(r.ended_at for r in records)
    minute = math.ceil(first / 60) * 60
    checked = Counter[str]()
    today_counts: dict[str, list[int]] = {}
    while minute <= last + 3600:
        while pending and pending[0].ended_at <= minute:
            record = pending.pop(0)
            clock.now = record.ended_at
            metrics.observe_call(record)
            finished.add(record.linkedid)
        clock.now = minute
        scrape = await scrape_metrics(metrics.registry)
        for (pbx, window), (counted, lo, hi) in expected_windows(
                truths, finished, minute).items():
            assert scrape.value("callhub_answered_within_rings_calls", pbx=pbx,
                                window=window) == counted, (pbx, window, minute)
            if window == "today":
                today_counts.setdefault(pbx, []).append(counted)
            ratio = scrape.value("callhub_answered_within_rings_ratio", pbx=pbx,
                                 rings="3", window=window)
            if counted == 0:
                assert ratio is None, (pbx, window, minute)
            else:
                assert ratio is not None and lo / counted <= ratio <= hi / counted, (
                    pbx, window, minute, ratio, lo, hi, counted)
                checked[window] += 1
        minute += 60
    # The walk must have seen every window with calls in it, and local midnight emptying
    # "today" (nothing else makes its count go down).
    assert set(checked) == {"15m", "1h", "today"}
    assert any(max(c) > 0 and c[-1] == 0 for c in today_counts.values()), today_counts

    scrape = await scrape_metrics(metrics.registry)
    check_totals(scrape, truths)
    for name in ("caller_number", "caller_name"):
        for t in truths:
            value = t.call.get(name)
            if value:
                assert value not in scrape.text and value.lstrip("+") not in scrape.text
