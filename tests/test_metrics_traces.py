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
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from metrics_fixtures import (
    TIMEZONE,
    Clock,
    ScrapeFn,
    Traces,
    check_totals,
    expected_windows,
    load,
)

from callhub.ami.ingest import PbxIngest
from callhub.ami.replay import replay_files
from callhub.config import settings_from_mapping
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord
from callhub.sim.ami_server import AmiSimulator


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
        scrape = await scrape_metrics(metrics.registry,
                                      only=("callhub_answered_within_rings_",))
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
