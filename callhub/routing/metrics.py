"""Prometheus collectors for routing, on the registry the rest of callhub uses.

The `line` label is a rota line name, or `other` for a DID no line lists, so
the label set stays bounded and never carries a caller's number.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from callhub.routing.chooser import Decision, Router

ROUTE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
OTHER = "other"


class RoutingMetrics:
    """`callhub_route_requests_total`, `callhub_route_seconds`, `callhub_agents_on_duty`.

    The on-duty gauge is computed from the router at scrape time, so it is
    right at any moment, also on a line that gets no calls.
    """

    def __init__(self, registry: CollectorRegistry | None = None,
                 router: Router | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.route_requests = Counter("callhub_route_requests",
                                      "FastAGI routing requests by line and result.",
                                      ["line", "result"], registry=r)
        self.route_seconds = Histogram("callhub_route_seconds",
                                       "Time from a complete FastAGI request to the last "
                                       "reply.", buckets=ROUTE_BUCKETS, registry=r)
        self.on_duty = OnDutyCollector(router)
        r.register(self.on_duty)

    def observe(self, decision: Decision, seconds: float) -> None:
        self.route_requests.labels(decision.line or OTHER, decision.result).inc()
        self.route_seconds.observe(seconds)


class OnDutyCollector(Collector):
    """`callhub_agents_on_duty{line}`: on duty now and allowed to take calls (active, cleared)."""

    def __init__(self, router: Router | None) -> None:
        self.router = router

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("callhub_agents_on_duty",
                                  "Agents on duty who may take calls.", labels=["line"])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("callhub_agents_on_duty",
                                   "Agents on duty who may take calls.", labels=["line"])
        router = self.router
        if router is not None:
            try:
                for name, line in router.rota.lines.items():
                    takers = [s for s in router.on_duty(line) if s.agent.can_take_calls]
                    family.add_metric([name], len(takers))
            except Exception:  # a scrape must not fail because of a bad rota
                pass
        yield family
