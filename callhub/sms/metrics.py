"""Prometheus collectors of the SMS sender, on the registry the caller gives.

- `callhub_sms_sent_total{line,result}`: attempts by outcome, result one of
  sent, retry, failed, expired;
- `callhub_sms_skipped_total{line,reason}`: calls that got no SMS, and why;
- `callhub_sms_delay_seconds{line}`: from the call's end to the SMS sent;
- `callhub_sms_within_deadline_ratio`: of the messages finished since start
  (sent, failed or expired), the share sent within `deadline_seconds`
  (300) of the call's end; absent until one has finished;
- `callhub_sms_gateway_available`: 0 while the gateway refuses this site (its
  credentials, its balance, its account): messages are held meanwhile.

Line labels are configured line names; anything else is `other`. Numbers
never appear.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

RESULTS = ("sent", "retry", "failed", "expired")
DELAY_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400)
OTHER = "other"


class _DeadlineRatio(Collector):
    def __init__(self, metrics: SmsMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        finished = self.metrics.finished
        if finished:
            yield GaugeMetricFamily(
                "callhub_sms_within_deadline_ratio",
                "Share of finished SMS sent within the deadline of the call's end.",
                value=self.metrics.within_deadline / finished)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class SmsMetrics:
    """The SMS metrics and the hooks the worker (and the decision's caller) call."""

    def __init__(self, registry: CollectorRegistry, lines: Iterable[str] = (),
                 deadline_seconds: float = 300.0) -> None:
        self.known_lines = set(lines)
        self.deadline_seconds = deadline_seconds
        self.finished = 0
        self.within_deadline = 0
        self.sent_total = Counter("callhub_sms_sent", "SMS attempts by line and result.",
                                  ["line", "result"], registry=registry)
        self.skipped_total = Counter("callhub_sms_skipped",
                                     "Calls that got no SMS, by line and reason.",
                                     ["line", "reason"], registry=registry)
        self.delay_seconds = Histogram("callhub_sms_delay_seconds",
                                       "From the call's end to its SMS sent.", ["line"],
                                       buckets=DELAY_BUCKETS, registry=registry)
        self.gateway_available = Gauge(
            "callhub_sms_gateway_available",
            "0 while the SMS gateway refuses this site (credentials, balance, account), not "
            "a message: messages are held until it takes them or they expire.",
            registry=registry)
        self.gateway_available.set(1)
        registry.register(_DeadlineRatio(self))
        for line in (*self.known_lines, OTHER):
            for result in RESULTS:
                self.sent_total.labels(line, result)

    def line_label(self, line: str | None) -> str:
        return line if line is not None and line in self.known_lines else OTHER

    def skipped(self, line: str | None, reason: str) -> None:
        self.skipped_total.labels(self.line_label(line), reason).inc()

    def retried(self, line: str | None) -> None:
        self.sent_total.labels(self.line_label(line), "retry").inc()

    def sent(self, line: str | None, delay_seconds: float) -> None:
        label = self.line_label(line)
        self.sent_total.labels(label, "sent").inc()
        self.delay_seconds.labels(label).observe(max(delay_seconds, 0.0))
        self.finished += 1
        if delay_seconds <= self.deadline_seconds:
            self.within_deadline += 1

    def failed(self, line: str | None, expired: bool = False) -> None:
        self.sent_total.labels(self.line_label(line), "expired" if expired else "failed").inc()
        self.finished += 1
