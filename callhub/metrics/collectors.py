"""Prometheus collectors for callhub, on a registry of their own (tests make fresh ones).

Labels never carry caller numbers or names. Agent and line labels come from
configuration only; anything unknown collapses to `other`, so every label
set is bounded.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from callhub.records import CallRecord

RING_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
SECONDS_BUCKETS = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
OTHER = "other"


class CallhubMetrics:
    """Every metric callhub exports, and the few methods that update them."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 agents: Iterable[str] = (), lines: Iterable[str] = ()) -> None:
        self.registry = registry or CollectorRegistry()
        self.known_agents = set(agents)
        self.known_lines = set(lines)
        r = self.registry
        self.calls = Counter("callhub_calls", "Finished calls.",
                             ["pbx", "line", "direction", "outcome"], registry=r)
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
        self.ami_events = Counter("callhub_ami_events", "AMI events read.", ["pbx"],
                                  registry=r)
        self.ami_malformed = Counter("callhub_ami_malformed",
                                     "AMI messages skipped as malformed.", ["pbx"], registry=r)
        self.ami_reconnects = Counter("callhub_ami_reconnects", "AMI reconnections.",
                                      ["pbx"], registry=r)
        self.db_buffered_calls = Gauge("callhub_db_buffered_calls",
                                       "Finished calls not yet in the database.", registry=r)
        self.db_write_errors = Counter("callhub_db_write_errors",
                                       "Failed database write batches.", registry=r)

    def agent_label(self, interface: str | None) -> str:
        return interface if interface in self.known_agents else OTHER

    def line_label(self, line: str | None) -> str:
        return line if line in self.known_lines else OTHER

    def observe_call(self, record: CallRecord) -> None:
        """Count one finished call."""
        self.calls.labels(record.pbx, self.line_label(record.line), record.direction,
                          record.outcome).inc()
        for attempt in record.attempts:
            if attempt.result is not None:
                self.agent_attempts.labels(self.agent_label(attempt.interface),
                                           attempt.result).inc()
        if record.direction != "inbound":
            if record.outcome == "answered":
                self.talk_seconds.labels(record.pbx).observe(record.talk_seconds)
            return
        self.ring_seconds.labels(record.pbx).observe(record.ring_seconds)
        self.wait_seconds.labels(record.pbx).observe(record.wait_seconds)
        if record.outcome == "answered":
            self.call_rings.labels(record.pbx).observe(record.rings)
            self.talk_seconds.labels(record.pbx).observe(record.talk_seconds)
