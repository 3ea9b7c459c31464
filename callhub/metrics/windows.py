"""Answer-within-N-rings ratios over sliding windows (15m, 1h, today), from minute buckets.

A Prometheus counter cannot say "since local midnight", and a gauge that the
desk reads on a wall must not depend on PromQL `rate()` extrapolation, so
callhub keeps a small in-memory tally per PBX: one bucket per minute of call
arrival holding (eligible calls, calls answered within N rings for each N).
Buckets older than both the longest window and local midnight are dropped, so
memory stays bounded (at most ~25 h x 60 buckets per PBX, whatever the load).

A call belongs to the minute of its arrival (`arrived_at`), as in the API's
period figures. A window includes every bucket whose minute starts at or after
`now - window` rounded down to the minute: exact when `now` is a whole minute,
up to one minute longer in between. `today` starts at local midnight in the
configured time zone.

The ratio is the inclusive service level of DESIGN.md: inbound calls answered
with `rings <= N` / all inbound calls, short abandons excluded from both sides
when `exclude_short_abandons` is set (the default, `stats.exclude_short_abandons`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from callhub.records import CallRecord

BUCKET_SECONDS = 60
WINDOWS: tuple[tuple[str, float], ...] = (("15m", 15 * 60.0), ("1h", 3600.0))
TODAY = "today"
WINDOW_NAMES: tuple[str, ...] = (*(name for name, _ in WINDOWS), TODAY)


@dataclass(slots=True)
class _Bucket:
    eligible: int
    within: list[int]


@dataclass(frozen=True, slots=True)
class WindowFigures:
    """One PBX's figures over one window: the ratio is within / eligible."""

    eligible: int
    within: dict[int, int]

    def ratio(self, rings: int) -> float | None:
        """None when no call counts in the window (a ratio of nothing is no figure)."""
        return self.within[rings] / self.eligible if self.eligible else None


def local_midnight(now: float, tz: ZoneInfo) -> float:
    """POSIX seconds of the last local midnight at or before `now` in `tz`."""
    local = datetime.fromtimestamp(now, tz)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class RingWindows:
    """The per-minute tally behind `callhub_answered_within_rings_ratio`."""

    def __init__(self, within_rings: Sequence[int] = (3,), tz: ZoneInfo | None = None,
                 exclude_short_abandons: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        if not within_rings or any(n < 0 for n in within_rings):
            raise ValueError("within_rings: need at least one ring count >= 0")
        self.within_rings = tuple(sorted(set(within_rings)))
        self.tz = tz or ZoneInfo("UTC")
        self.exclude_short_abandons = exclude_short_abandons
        self.clock = clock
        self._buckets: dict[str, dict[int, _Bucket]] = {}

    def add_pbx(self, pbx: str) -> None:
        """Make a PBX known, so its windows report 0 calls before its first call."""
        self._buckets.setdefault(pbx, {})

    @property
    def pbxs(self) -> list[str]:
        return sorted(self._buckets)

    def counts(self, record: CallRecord) -> bool:
        """Whether a finished call enters the ratio at all."""
        if record.direction != "inbound":
            return False
        return not (self.exclude_short_abandons and record.short_abandon)

    def observe(self, pbx: str, record: CallRecord) -> None:
        """Tally one finished call under the (already bounded) PBX label `pbx`."""
        if not self.counts(record):
            return
        now = self.clock()
        now_index = _index(now)
        index = min(_index(record.arrived_at), now_index)  # a clock-skewed future call: now
        if index < self._oldest_needed(now):
            return  # older than every window: it can never show
        buckets = self._buckets.setdefault(pbx, {})
        bucket = buckets.get(index)
        if bucket is None:
            bucket = buckets[index] = _Bucket(0, [0] * len(self.within_rings))
            self._prune(now)
        bucket.eligible += 1
        if record.outcome == "answered":
            for i, n in enumerate(self.within_rings):
                if record.rings <= n:
                    bucket.within[i] += 1

    def figures(self, now: float | None = None) -> dict[tuple[str, str], WindowFigures]:
        """(pbx, window) -> figures at `now` (default: the clock)."""
        now = self.clock() if now is None else now
        self._prune(now)
        starts = {name: _index(now - seconds) for name, seconds in WINDOWS}
        starts[TODAY] = _index(local_midnight(now, self.tz))
        end = _index(now)
        out: dict[tuple[str, str], WindowFigures] = {}
        for pbx, buckets in self._buckets.items():
            for window, start in starts.items():
                eligible = 0
                within = [0] * len(self.within_rings)
                for index, bucket in buckets.items():
                    if start <= index <= end:
                        eligible += bucket.eligible
                        within = [a + b for a, b in zip(within, bucket.within, strict=True)]
                out[(pbx, window)] = WindowFigures(
                    eligible, dict(zip(self.within_rings, within, strict=True)))
        return out

    def bucket_count(self) -> int:
        """How many minute buckets are held (the memory bound, for tests and debugging)."""
        return sum(len(b) for b in self._buckets.values())

    def _oldest_needed(self, now: float) -> int:
        longest = max(seconds for _, seconds in WINDOWS)
        return min(_index(now - longest), _index(local_midnight(now, self.tz)))

    def _prune(self, now: float) -> None:
        oldest = self._oldest_needed(now)
        for buckets in self._buckets.values():
            for index in [i for i in buckets if i < oldest]:
                del buckets[index]


def _index(ts: float) -> int:
    return math.floor(ts / BUCKET_SECONDS)


class RingWindowsCollector(Collector):
    """Exports the windows at scrape time, so the figures slide without new calls."""

    RATIO = "callhub_answered_within_rings_ratio"
    CALLS = "callhub_answered_within_rings_calls"

    def __init__(self, windows: RingWindows,
                 exported: Callable[[str], bool] = lambda pbx: True) -> None:
        self.windows = windows
        self.exported = exported  # a standby of a pair keeps its windows but exports none

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        ratio, calls = self._families()
        for (pbx, window), figures in sorted(self.windows.figures().items()):
            if not self.exported(pbx):
                continue
            calls.add_metric([pbx, window], figures.eligible)
            for n in self.windows.within_rings:
                value = figures.ratio(n)
                if value is not None:
                    ratio.add_metric([pbx, str(n), window], value)
        return [ratio, calls]

    def _families(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            self.RATIO,
            "Inbound calls answered within N rings / inbound calls, over a window "
            "(short abandons excluded when configured); absent while the window has no call.",
            labels=["pbx", "rings", "window"])
        yield GaugeMetricFamily(
            self.CALLS,
            "Inbound calls counted in the window (the denominator of the ratio).",
            labels=["pbx", "window"])
