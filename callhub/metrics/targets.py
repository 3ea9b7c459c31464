"""Each line against its own ring target, over the same windows as the fixed-N ratios.

`callhub_answered_within_target_ratio{line,window}` is the share of a line's
inbound calls answered within that line's `target_rings` ([lines] in the
config), beside `callhub_answered_within_rings_ratio`, whose N is the same for
every PBX. The targets themselves are gauges (`callhub_line_target_rings`,
`callhub_line_answer_rate_target`), so an alert rule or a dashboard compares
each line with its own target without repeating the configuration.

The tally is a `RingWindows` keyed by line label instead of PBX, counting
every ring target in use; a line's ratio reads its own target's count. Line
labels are the configured lines and `other` (which has the default target).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from zoneinfo import ZoneInfo

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from callhub.config.targets import LineTargets
from callhub.metrics.windows import RingWindows
from callhub.records import CallRecord


class LineTargetWindows:
    """Per line label, calls and calls answered within each ring target, per minute."""

    def __init__(self, targets: LineTargets, labels: Iterable[str], tz: ZoneInfo,
                 exclude_short_abandons: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.targets = targets
        self.windows = RingWindows(targets.ring_counts(), tz, exclude_short_abandons, clock)
        for label in labels:
            self.windows.add_pbx(label)  # a key of the tally: here a line label

    @property
    def lines(self) -> list[str]:
        return self.windows.pbxs

    def observe(self, line_label: str, record: CallRecord) -> None:
        """Tally one finished call under its (already bounded) line label."""
        self.windows.observe(line_label, record)


class LineTargetCollector(Collector):
    """Exports each line's within-target ratio, its denominator, and its targets."""

    RATIO = "callhub_answered_within_target_ratio"
    CALLS = "callhub_answered_within_target_calls"
    TARGET_RINGS = "callhub_line_target_rings"
    ANSWER_RATE_TARGET = "callhub_line_answer_rate_target"

    def __init__(self, tally: LineTargetWindows,
                 exported: Callable[[], bool] = lambda: True) -> None:
        self.tally = tally
        self.exported = exported  # a pair's standby keeps its windows but exports none

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        ratio, calls, rings, rate = self._families()
        targets = self.tally.targets
        for line in self.tally.lines:
            target = targets.of(line)
            rings.add_metric([line], target.target_rings)
            rate.add_metric([line], target.answer_rate_target)
        figures_by_window = self.tally.windows.figures() if self.exported() else {}
        for (line, window), figures in sorted(figures_by_window.items()):
            calls.add_metric([line, window], figures.eligible)
            value = figures.ratio(targets.of(line).target_rings)
            if value is not None:
                ratio.add_metric([line, window], value)
        return [ratio, calls, rings, rate]

    def _families(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            self.RATIO,
            "A line's inbound calls answered within its own target_rings / its inbound calls, "
            "over a window (short abandons excluded when configured); absent while the window "
            "has no call.", labels=["line", "window"])
        yield GaugeMetricFamily(
            self.CALLS, "A line's inbound calls counted in the window (the ratio's denominator).",
            labels=["line", "window"])
        yield GaugeMetricFamily(
            self.TARGET_RINGS, "A line's ring target: answered within this many rings is "
            "within target ([lines] in the config).", labels=["line"])
        yield GaugeMetricFamily(
            self.ANSWER_RATE_TARGET, "A line's answer-rate target: the share of its inbound "
            "calls to answer within its target_rings (0..1).", labels=["line"])
