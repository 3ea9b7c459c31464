"""CallhubMetrics and /metrics: names, windows, short abandons, bounded labels, the token."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from metrics_fixtures import ScrapeFn, make_record

from callhub.config import settings_from_mapping
from callhub.metrics.collectors import OTHER, CallhubMetrics
from callhub.metrics.windows import RingWindows, local_midnight
from callhub.records import ATTEMPT_RESULTS, OUTCOMES, REASONS, Attempt

ISSUE_METRICS = {
    "callhub_calls_total", "callhub_call_rings_bucket", "callhub_call_ring_seconds_bucket",
    "callhub_call_wait_seconds_bucket", "callhub_call_talk_seconds_bucket",
    "callhub_answered_within_rings_ratio", "callhub_worklist_pending",
    "callhub_callback_seconds_bucket", "callhub_active_calls",
    "callhub_agent_attempts_total", "callhub_ami_connected", "callhub_ami_events_total",
    "callhub_ami_malformed_total", "callhub_ami_reconnects_total",
    "callhub_db_buffered_calls", "callhub_db_write_errors_total",
}

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=ZoneInfo("UTC")).timestamp()  # a whole minute


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def exercised(clock: Clock) -> CallhubMetrics:
    m = CallhubMetrics(agents=["PJSIP/1001"], pbxs=["main"], clock=clock)
    m.observe_call(make_record(arrived_at=clock.now - 60))
    m.active_calls.labels("main").set(2)
    m.ami_connected.labels("main").set(1)
    m.ami_events.labels("main").inc(10)
    m.ami_malformed.labels("main").inc()
    m.ami_reconnects.labels("main").inc()
    m.set_worklist(3, clock.now - 600)
    m.observe_callback(120)
    return m


async def test_every_metric_of_the_issue_is_served_with_its_prometheus_name(
        scrape_metrics: ScrapeFn) -> None:
    scrape = await scrape_metrics(exercised(Clock(T0)).registry)
    names = {name for name, _ in scrape.samples}
    assert names >= ISSUE_METRICS, ISSUE_METRICS - names
    assert scrape.value("callhub_active_calls", pbx="main") == 2
    assert scrape.value("callhub_worklist_pending") == 3
    assert scrape.value("callhub_worklist_oldest_pending_timestamp_seconds") == T0 - 600


async def test_wait_histogram_has_a_bucket_at_20_seconds(scrape_metrics: ScrapeFn) -> None:
    clock = Clock(T0)
    m = CallhubMetrics(clock=clock)
    for wait in (19.0, 20.0, 21.0):
        m.observe_call(make_record(wait_seconds=wait))
    scrape = await scrape_metrics(m.registry)
    assert scrape.value("callhub_call_wait_seconds_bucket", pbx="main", le="20.0") == 2
    assert scrape.value("callhub_call_wait_seconds_count", pbx="main") == 3


def test_rings_histogram_counts_only_answered_inbound_calls() -> None:
    m = CallhubMetrics()
    m.observe_call(make_record(rings=3))
    m.observe_call(make_record(outcome="abandoned", answered_at=None, rings=1,
                               reason="while_ringing", agent=None))
    m.observe_call(make_record(direction="outbound", rings=0))
    count = m.registry.get_sample_value("callhub_call_rings_count", {"pbx": "main"})
    assert count == 1
    calls = m.registry.get_sample_value(
        "callhub_calls_total",
        {"pbx": "main", "line": OTHER, "direction": "inbound", "outcome": "abandoned"})
    assert calls == 1


def window_calls() -> list[tuple[float, str, int, bool]]:
    """(minutes before now, outcome, rings, short abandon) of a morning's calls."""
    return [
        (1, "answered", 1, False), (5, "answered", 3, False), (10, "answered", 4, False),
        (14, "abandoned", 2, False), (14, "abandoned", 1, True), (20, "answered", 2, False),
        (45, "missed", 0, False), (59, "answered", 3, False), (90, "answered", 1, False),
    ]


def expected_ratio(calls: list[tuple[float, str, int, bool]], minutes: float,
                   exclude_short: bool) -> tuple[float, int]:
    counted = [c for c in calls if c[0] <= minutes and not (exclude_short and c[3])]
    within = [c for c in counted if c[1] == "answered" and c[2] <= 3]
    return len(within) / len(counted), len(counted)


@pytest.mark.parametrize("exclude_short", [True, False])
async def test_windowed_ratio_is_the_inclusive_rate_with_short_abandons_configurable(
        scrape_metrics: ScrapeFn, exclude_short: bool) -> None:
    clock = Clock(T0)
    m = CallhubMetrics(pbxs=["main"], clock=clock, exclude_short_abandons=exclude_short)
    calls = window_calls()
    for minutes, outcome, rings, short in calls:
        m.observe_call(make_record(arrived_at=T0 - minutes * 60, outcome=outcome, rings=rings,
                                   short_abandon=short))
    scrape = await scrape_metrics(m.registry)
    minutes_since_midnight = (T0 - local_midnight(T0, ZoneInfo("UTC"))) / 60
    for window, minutes in (("15m", 15), ("1h", 60), ("today", minutes_since_midnight)):
        ratio, counted = expected_ratio(calls, minutes, exclude_short)
        got = scrape.value("callhub_answered_within_rings_ratio", pbx="main", rings="3",
                           window=window)
        assert got == pytest.approx(ratio), window
        assert scrape.value("callhub_answered_within_rings_calls", pbx="main",
                            window=window) == counted


async def test_windows_slide_with_the_clock_and_today_starts_at_local_midnight(
        scrape_metrics: ScrapeFn) -> None:
    tz = "Asia/Shanghai"  # UTC+8: local midnight is 16:00 UTC
    midnight = datetime(2026, 3, 3, 0, 0, tzinfo=ZoneInfo(tz)).timestamp()
    clock = Clock(midnight - 5 * 60)
    m = CallhubMetrics(pbxs=["main"], timezone=tz, clock=clock)
    m.observe_call(make_record(arrived_at=midnight - 4 * 60, rings=5))  # yesterday, late
    clock.now = midnight + 2 * 60
    m.observe_call(make_record(arrived_at=midnight + 60, rings=2))  # today
    scrape = await scrape_metrics(m.registry)
    assert scrape.value("callhub_answered_within_rings_ratio", pbx="main", rings="3",
                        window="today") == 1.0
    assert scrape.value("callhub_answered_within_rings_ratio", pbx="main", rings="3",
                        window="15m") == 0.5
    clock.now = midnight + 61 * 60  # both calls now older than 15 min, one within 1 h
    scrape = await scrape_metrics(m.registry)
    assert scrape.value("callhub_answered_within_rings_ratio", pbx="main", rings="3",
                        window="15m") is None  # no call: no ratio
    assert scrape.value("callhub_answered_within_rings_calls", pbx="main",
                        window="15m") == 0
    assert scrape.value("callhub_answered_within_rings_ratio", pbx="main", rings="3",
                        window="1h") == 1.0
    assert scrape.value("callhub_answered_within_rings_ratio", pbx="main", rings="3",
                        window="today") == 1.0


def test_window_memory_stays_bounded_over_days_of_calls() -> None:
    clock = Clock(T0)
    windows = RingWindows(clock=clock)
    record = make_record()
    most = 0
    for minute in range(4 * 24 * 60):  # four days, a call every minute
        clock.now = T0 + minute * 60
        record.arrived_at = clock.now
        windows.observe("main", record)
        most = max(most, windows.bucket_count())
    assert most <= 25 * 60 + 1  # since midnight (<= 25 h with DST) or 1 h, never more
    assert windows.bucket_count() <= max(60, (clock.now - local_midnight(clock.now,
                                                                         windows.tz)) / 60) + 1


def test_a_call_older_than_every_window_is_not_kept() -> None:
    clock = Clock(T0)
    windows = RingWindows(clock=clock)
    windows.observe("main", make_record(arrived_at=T0 - 2 * 86400))
    assert windows.bucket_count() == 0


# Label values that are closed-set words ("3", "main") are not caller data, even if a
# generated name happens to spell one.
CLOSED_WORDS = {"main", "sales", "PJSIP/1001", "inbound", "outbound", "internal", "3", "15m",
                "1h", "today", OTHER, *OUTCOMES, *REASONS, *ATTEMPT_RESULTS}
caller = st.text(min_size=1, max_size=20).filter(
    lambda s: s.strip() != "" and s not in CLOSED_WORDS)


@settings(max_examples=60, deadline=None)
@given(numbers=st.lists(st.from_regex(r"\+?[0-9]{6,15}", fullmatch=True), min_size=1,
                        max_size=8),
       names=st.lists(caller, min_size=1, max_size=8),
       junk=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8))
def test_labels_never_carry_caller_data_and_stay_in_closed_sets(
        numbers: list[str], names: list[str], junk: list[str]) -> None:
    m = CallhubMetrics(agents=["PJSIP/1001"], lines=["sales"], pbxs=["main"],
                       clock=Clock(T0))
    for i, number in enumerate(numbers):
        name = names[i % len(names)]
        odd = junk[i % len(junk)]
        m.observe_call(make_record(
            pbx=odd, line=odd, caller_number=number, caller_name=name, called_number=number,
            outcome="abandoned", reason=odd, short_abandon=True, agent=odd,
            attempts=[Attempt(odd, name, T0, None, T0 + 1, "no_answer"),
                      Attempt("PJSIP/1001", name, T0, None, T0 + 1, "busy")]))
        m.observe_call(make_record(line="sales", caller_number=number, caller_name=name))
    allowed = {
        "pbx": {"main", OTHER}, "line": {"sales", OTHER},
        "direction": {"inbound", "outbound", "internal", OTHER},
        "outcome": set(OUTCOMES) | {OTHER}, "reason": set(REASONS) | {OTHER},
        "agent": {"PJSIP/1001", OTHER}, "result": set(ATTEMPT_RESULTS) | {OTHER},
        "rings": {"3"}, "window": {"15m", "1h", "today"},
    }
    for metric in m.registry.collect():
        for sample in metric.samples:
            for label, value in sample.labels.items():
                if label == "le":
                    continue
                assert value in allowed[label], (sample.name, label, value)
                assert value not in numbers and value not in names


async def test_scraped_text_holds_no_caller_number_or_name(scrape_metrics: ScrapeFn) -> None:
    m = CallhubMetrics(clock=Clock(T0))  # no configuration at all: the most permissive case
    m.observe_call(make_record(caller_number="+8613912345678", caller_name="王小明",
                               line="+8613912345678", agent="+8613912345678",
                               attempts=[Attempt("+8613912345678", "王小明", T0)]))
    scrape = await scrape_metrics(m.registry)
    assert "13912345678" not in scrape.text and "王小明" not in scrape.text


def test_from_settings_takes_label_values_from_configuration() -> None:
    cfg = settings_from_mapping({
        "timezone": "Europe/Berlin",
        "stats": {"exclude_short_abandons": False},
        "pbx": [{"name": "hq", "agents": {"PJSIP/1001": "Li Na"},
                 "lines": {"4008001000": "hotline"}}],
    })
    m = CallhubMetrics.from_settings(cfg, clock=Clock(T0))
    assert m.known_pbxs == {"hq"} and m.known_agents == {"PJSIP/1001"}
    assert m.known_lines == {"hotline"}
    assert m.windows.tz == ZoneInfo("Europe/Berlin")
    assert m.windows.exclude_short_abandons is False
    assert m.pbx_label("elsewhere") == OTHER and m.line_label("4008001000") == OTHER


async def test_configured_pbx_reports_zero_calls_before_its_first_call(
        scrape_metrics: ScrapeFn) -> None:
    scrape = await scrape_metrics(CallhubMetrics(pbxs=["hq"], lines=["sales"],
                                                 clock=Clock(T0)).registry)
    for window in ("15m", "1h", "today"):
        assert scrape.value("callhub_answered_within_rings_calls", pbx="hq",
                            window=window) == 0
    # Per-PBX series exist at 0 before anything happens: alerts and increase() see them.
    for name in ("callhub_ami_connected", "callhub_active_calls", "callhub_ami_events_total",
                 "callhub_ami_malformed_total", "callhub_ami_reconnects_total"):
        assert scrape.value(name, pbx="hq") == 0, name
    for line in ("sales", OTHER):
        assert scrape.value("callhub_short_abandons_total", pbx="hq", line=line) == 0


async def test_token_is_required_only_when_configured(scrape_metrics: ScrapeFn) -> None:
    registry = exercised(Clock(T0)).registry
    assert (await scrape_metrics(registry)).value("callhub_worklist_pending") == 3
    with pytest.raises(aiohttp.ClientResponseError) as missing:
        await scrape_metrics(registry, token="s3cret-token")
    assert missing.value.status == 401
    with pytest.raises(aiohttp.ClientResponseError) as wrong:
        await scrape_metrics(registry, token="s3cret-token",
                             headers={"Authorization": "Bearer s3cret-tokeX"})
    assert wrong.value.status == 401
    ok = await scrape_metrics(registry, token="s3cret-token",
                              headers={"Authorization": "Bearer s3cret-token"})
    assert ok.value("callhub_worklist_pending") == 3


async def test_openmetrics_is_served_when_prometheus_asks_for_it(
        scrape_metrics: ScrapeFn) -> None:
    registry = exercised(Clock(T0)).registry
    scrape = await scrape_metrics(registry, headers={
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
    assert re.search(r"^# EOF$", scrape.text, re.M)
