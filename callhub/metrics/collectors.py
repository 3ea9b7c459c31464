"""Prometheus collectors for callhub, on a registry of their own (tests make fresh ones).

Labels never carry caller numbers or names. Every label value comes from a
closed set: PBX names, agent interfaces and line names from configuration,
directions, outcomes, reasons and attempt results from `callhub.records`;
anything else collapses to `other`, so the number of series is bounded
whatever the calls look like.

Counters are declared without the `_total` suffix: the client adds it, so
`Counter("callhub_calls")` is scraped as `callhub_calls_total`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from callhub.config import Settings
from callhub.config.targets import LineTargets
from callhub.metrics.targets import LineTargetCollector, LineTargetWindows
from callhub.metrics.windows import RingWindows, RingWindowsCollector
from callhub.records import ATTEMPT_RESULTS, OUTCOMES, REASONS, CallRecord

RING_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
SECONDS_BUCKETS = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
CALLBACK_BUCKETS = (300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800)
DIRECTIONS = ("inbound", "outbound", "internal")
OTHER = "other"


def bounded(value: str | None, allowed: Iterable[str]) -> str:
    """`value` if it is one of `allowed`, else `other`: the one rule for every label."""
    return value if value is not None and value in allowed else OTHER


class CallhubMetrics:
    """Every metric callhub exports, and the few methods that update them.

    `pbxs`, `agents` and `lines` are the configured names (the label values
    allowed); an empty `pbxs` accepts any PBX name (replay without a config).
    The windowed ratios read `clock` at scrape time. `targets` are each line's ring
    and answer-rate targets (`callhub_answered_within_target_ratio`).
    """

    def __init__(self, registry: CollectorRegistry | None = None,
                 agents: Iterable[str] = (), lines: Iterable[str] = (), *,
                 pbxs: Iterable[str] = (), within_rings: Sequence[int] = (3,),
                 timezone: str = "UTC", exclude_short_abandons: bool = True,
                 clock: Callable[[], float] = time.time,
                 targets: LineTargets | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # Whether this instance exports a PBX's call metrics: a hot-standby pair's standby
        # does not (the daemon sets it to the election's `is_writer`), so that a pair is
        # never counted twice; it keeps its ring windows, for when it takes over.
        self.counts: Callable[[str], bool] = lambda pbx: True
        self.known_agents = set(agents)
        self.known_lines = set(lines)
        self.known_pbxs = set(pbxs)
        r = self.registry
        self.calls = Counter("callhub_calls", "Finished calls.",
                             ["pbx", "line", "direction", "outcome"], registry=r)
        self.call_reasons = Counter("callhub_call_reasons",
                                    "Unanswered inbound calls by why they were lost.",
                                    ["pbx", "outcome", "reason"], registry=r)
        self.short_abandons = Counter("callhub_short_abandons",
                                      "Abandoned inbound calls whose wait was under the "
                                      "short-abandon threshold (also in callhub_calls_total).",
                                      ["pbx", "line"], registry=r)
        self.call_rings = Histogram("callhub_call_rings",
                                    "Rings before answer, answered inbound calls.",
                                    ["pbx"], buckets=RING_BUCKETS, registry=r)
        self.ring_seconds = Histogram("callhub_call_ring_seconds",
                                      "Ring time of inbound calls.", ["pbx"],
                                      buckets=SECONDS_BUCKETS, registry=r)
        self.wait_seconds = Histogram("callhub_call_wait_seconds",
                                      "Caller wait until answer or end, inbound calls.",
                                      ["pbx"], buckets=SECONDS_BUCKETS, registry=r)
        self.talk_seconds = Histogram("callhub_call_talk_seconds",
                                      "Talk time of answered calls.", ["pbx"],
                                      buckets=SECONDS_BUCKETS, registry=r)
        self.agent_attempts = Counter("callhub_agent_attempts", "Offers of calls to agents.",
                                      ["agent", "result"], registry=r)
        self.active_calls = Gauge("callhub_active_calls", "Calls in progress.", ["pbx"],
                                  registry=r)
        self.ami_connected = Gauge("callhub_ami_connected", "1 while logged in to AMI.",
                                   ["pbx"], registry=r)
        self.pbx_clock_offset = Gauge(
            "callhub_pbx_clock_offset_seconds",
            "The PBX's clock minus this host's, from the Timestamp of the last AMI event "
            "read (delivery adds milliseconds). Calls are timed by the PBX's clock: "
            "hourly figures and SMS delays move by it.", ["pbx"], registry=r)
        self.ami_events = Counter("callhub_ami_events", "AMI events read.", ["pbx"],
                                  registry=r)
        self.ami_malformed = Counter("callhub_ami_malformed",
                                     "AMI messages skipped as malformed.", ["pbx"], registry=r)
        self.ami_reconnects = Counter("callhub_ami_reconnects", "AMI reconnections.",
                                      ["pbx"], registry=r)
        self.gap_seconds = Counter(
            "callhub_gap_seconds",
            "Seconds with no AMI session and no CEL table to rebuild their calls from: "
            "the calls of those seconds are not recorded (docs/reliability.md).",
            ["pbx"], registry=r)
        self.cel_recovered_calls = Counter(
            "callhub_cel_recovered_calls",
            "Calls of a gap in the AMI stream rebuilt from Asterisk's CEL table and handed "
            "to the writer (stored unless a record of the call is stored already).",
            ["pbx"], registry=r)
        self.correlator_errors = Counter(
            "callhub_correlator_errors",
            "AMI events the correlator could not apply (skipped), by event kind (one of the "
            "kinds it handles: a closed set).", ["pbx", "event"], registry=r)
        self.writer = Gauge("callhub_writer",
                            "1 while this instance writes the PBX's calls to the database, 0 "
                            "while it is the standby of a pair (queries select the writer's "
                            "series with it, so a pair is not counted twice).", ["pbx"],
                            registry=r)
        self.db_buffered_calls = Gauge("callhub_db_buffered_calls",
                                       "Finished calls not yet in the database.", registry=r)
        self.db_write_errors = Counter("callhub_db_write_errors",
                                       "Failed database write batches.", registry=r)
        self.spool_errors = Counter("callhub_spool_errors",
                                    "Failed writes to the spool (disk full, directory not "
                                    "writable); calls are kept in memory meanwhile.",
                                    registry=r)
        self.spool_writable = Gauge("callhub_spool_writable",
                                    "1 while the spool (the write-ahead log of finished "
                                    "calls) can be written.", registry=r)
        self.spool_writable.set(1)
        self.quarantined_calls = Counter("callhub_quarantined_calls",
                                         "Calls the database refused for their data, and "
                                         "spool lines that could not be read back, put in "
                                         "the quarantine table (callhub db quarantine).",
                                         registry=r)
        self.calls_dropped = Counter("callhub_calls_dropped",
                                     "Finished calls lost because neither the spool nor "
                                     "memory could take them.", registry=r)
        # What runs, set once the daemon has started (`callhub_build_info{...} 1`): a host
        # whose AMI hot path runs as Python (an install without a C compiler) shows here.
        self.build = Info("callhub_build",
                          "What this process runs: callhub's version, the AMI parser and "
                          "correlator (compiled or python) and the event loop.", registry=r)
        self.worklist_pending = Gauge("callhub_worklist_pending",
                                      "Missed and abandoned calls waiting for a callback.",
                                      registry=r)
        self.worklist_oldest_pending = Gauge(
            "callhub_worklist_oldest_pending_timestamp_seconds",
            "Arrival time of the oldest call waiting for a callback (0 when none waits).",
            registry=r)
        self.callback_seconds = Histogram("callhub_callback_seconds",
                                          "Time from a missed or abandoned call to its "
                                          "callback.", buckets=CALLBACK_BUCKETS, registry=r)
        self.windows = RingWindows(within_rings, ZoneInfo(timezone), exclude_short_abandons,
                                   clock)
        self.line_targets = LineTargetWindows(
            targets or LineTargets(), (*sorted(self.known_lines), OTHER), ZoneInfo(timezone),
            exclude_short_abandons, clock)
        for pbx in self.known_pbxs:
            self._init_pbx(pbx)
        r.register(RingWindowsCollector(self.windows, lambda pbx: self.counts(pbx)))
        r.register(LineTargetCollector(self.line_targets, self._writes_any))

    def _writes_any(self) -> bool:
        """Whether this instance exports the per-line figures (lines span PBXs): unless it
        is the standby of every PBX."""
        return not self.known_pbxs or any(self.counts(p) for p in self.known_pbxs)

    def _init_pbx(self, pbx: str) -> None:
        """Series of a configured PBX exist from the start (at 0), so that `increase()`
        sees their first change and alerts see a disconnected PBX before it ever connected."""
        self.windows.add_pbx(pbx)
        for metric in (self.active_calls, self.ami_connected, self.pbx_clock_offset,
                       self.ami_events,
                       self.ami_malformed, self.ami_reconnects, self.gap_seconds,
                       self.cel_recovered_calls):
            metric.labels(pbx)
        for line in (*self.known_lines, OTHER):
            self.short_abandons.labels(pbx, line)

    @classmethod
    def from_settings(cls, settings: Settings, registry: CollectorRegistry | None = None,
                      clock: Callable[[], float] = time.time,
                      within_rings: Sequence[int] = (3,)) -> CallhubMetrics:
        """The metrics for a configuration: its PBXs, agents and lines are the label values."""
        return cls(
            registry,
            agents=[a for p in settings.pbxs for a in p.agents],
            lines=[line for p in settings.pbxs for line in p.lines.values()],
            pbxs=[p.name for p in settings.pbxs],
            within_rings=within_rings,
            timezone=settings.timezone,
            exclude_short_abandons=settings.stats_exclude_short_abandons,
            clock=clock,
            targets=settings.line_targets(),
        )

    def pbx_label(self, pbx: str) -> str:
        return pbx if not self.known_pbxs or pbx in self.known_pbxs else OTHER

    def agent_label(self, interface: str | None) -> str:
        return bounded(interface, self.known_agents)

    def line_label(self, line: str | None) -> str:
        return bounded(line, self.known_lines)

    def observe_call(self, record: CallRecord) -> None:
        """Count one finished call."""
        pbx = self.pbx_label(record.pbx)
        line = self.line_label(record.line)
        self.windows.observe(pbx, record)
        self.line_targets.observe(line, record)
        if not self.counts(record.pbx):
            return  # the standby of a pair: the writer counts it
        direction = bounded(record.direction, DIRECTIONS)
        outcome = bounded(record.outcome, OUTCOMES)
        self.calls.labels(pbx, line, direction, outcome).inc()
        for attempt in record.attempts:
            if attempt.result is not None:
                self.agent_attempts.labels(self.agent_label(attempt.interface),
                                           bounded(attempt.result, ATTEMPT_RESULTS)).inc()
        if direction != "inbound":
            if outcome == "answered":
                self.talk_seconds.labels(pbx).observe(record.talk_seconds)
            return
        if record.reason is not None and outcome != "answered":
            self.call_reasons.labels(pbx, outcome, bounded(record.reason, REASONS)).inc()
        if record.short_abandon:
            self.short_abandons.labels(pbx, line).inc()
        self.ring_seconds.labels(pbx).observe(record.ring_seconds)
        self.wait_seconds.labels(pbx).observe(record.wait_seconds)
        if outcome == "answered":
            self.call_rings.labels(pbx).observe(record.rings)
            self.talk_seconds.labels(pbx).observe(record.talk_seconds)

    def correlator_error(self, pbx: str, event: str) -> None:
        """One event the correlator skipped; `event` is its kind (a handled kind)."""
        self.correlator_errors.labels(self.pbx_label(pbx), event).inc()

    def set_worklist(self, pending: int, oldest_pending_at: float | None) -> None:
        """The worklist's size and its oldest open call's arrival (None: nothing open)."""
        self.worklist_pending.set(pending)
        self.worklist_oldest_pending.set(oldest_pending_at or 0.0)

    def observe_callback(self, seconds: float) -> None:
        """A worklist entry was handled `seconds` after the call it was opened for."""
        self.callback_seconds.observe(max(seconds, 0.0))
