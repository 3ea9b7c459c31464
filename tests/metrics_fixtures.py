"""Shared helpers for the metrics tests: call records to observe, and a real /metrics scrape."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from traces_fixtures import all_traces

from callhub.ami.groundtruth import pbx_from_truth
from callhub.config import PbxConfig
from callhub.metrics.collectors import OTHER, RING_BUCKETS, SECONDS_BUCKETS
from callhub.metrics.http import add_metrics_route
from callhub.records import Attempt, CallRecord


def make_record(**overrides: Any) -> CallRecord:
    """An answered inbound call with plausible values; override what a test is about."""
    arrived = float(overrides.pop("arrived_at", 1_800_000_000.0))
    values: dict[str, Any] = dict(
        pbx="main", linkedid=f"{arrived:.0f}.1", direction="inbound", line=None,
        called_number="4008001000", caller_number="+8613800000001", caller_name="张三",
        arrived_at=arrived, ring_started_at=arrived + 1, answered_at=arrived + 8,
        ended_at=arrived + 30, ring_seconds=7.0, rings=2, wait_seconds=8.0,
        talk_seconds=22.0, hold_seconds=0.0, outcome="answered", reason=None,
        voicemail=False, short_abandon=False, agent="PJSIP/1001", agent_name="Li Na",
        hangup_by="external", hangup_cause=16, queue=None,
        attempts=[Attempt("PJSIP/1001", "Li Na", arrived + 1, arrived + 1, arrived + 8,
                          "answered", 7.0)],
    )
    values.update(overrides)
    return CallRecord(**values)


@dataclass
class Scrape:
    """One parsed /metrics answer: samples by (name, sorted labels)."""

    text: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, only: tuple[str, ...] = ()) -> Scrape:
        """`only`: parse just the families whose names start so (prometheus_client's
        parser is most of a test that scrapes thousands of times); `text` stays whole."""
        scrape = cls(text)
        if only:
            heads = only + tuple(f"# {kind} {name}" for kind in ("HELP", "TYPE")
                                 for name in only)
            text = "".join(line for line in text.splitlines(keepends=True)
                           if line.startswith(heads))
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                scrape.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return scrape

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def total(self, name: str, **labels: str) -> float:
        """Sum of `name` over every series whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def label_values(self) -> set[tuple[str, str, str]]:
        """(metric, label, value) for every label of every sample."""
        return {(n, k, v) for (n, ls) in self.samples for k, v in ls}


ScrapeFn = Callable[..., Awaitable[Scrape]]


@pytest.fixture
async def scrape_metrics() -> AsyncIterator[ScrapeFn]:
    """Serve a registry at /metrics on a real loopback port, GET it, parse the text.

    Call as `await scrape_metrics(registry, token=None, headers=None, only=())`; a non-200
    answer raises with its status so tests can assert on it; `only` as `Scrape.parse`.
    """
    servers: dict[tuple[int, str | None], TestServer] = {}

    async def scrape(registry: CollectorRegistry, token: str | None = None,
                     headers: dict[str, str] | None = None,
                     only: tuple[str, ...] = ()) -> Scrape:
        server = servers.get((id(registry), token))
        if server is None:  # one running server per registry and token, scraped repeatedly
            app = web.Application()
            add_metrics_route(app, registry, token)
            server = servers[(id(registry), token)] = TestServer(app, host="127.0.0.1")
            await server.start_server()
        async with aiohttp.ClientSession() as session, session.get(
                server.make_url("/metrics"), headers=headers or {}) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                  message=text)
            return Scrape.parse(text, only)

    yield scrape
    for server in servers.values():
        await server.close()


# -- ground truth of the recorded traces (tests/test_metrics_traces.py, test_metrics_daemon.py)

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
