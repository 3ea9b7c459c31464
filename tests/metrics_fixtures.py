"""Shared helpers for the metrics tests: call records to observe, and a real /metrics scrape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

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
    def parse(cls, text: str) -> Scrape:
        scrape = cls(text)
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

    Call as `await scrape_metrics(registry, token=None, headers=None)`; a non-200
    answer raises with its status so tests can assert on it.
    """
    servers: dict[tuple[int, str | None], TestServer] = {}

    async def scrape(registry: CollectorRegistry, token: str | None = None,
                     headers: dict[str, str] | None = None) -> Scrape:
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
            return Scrape.parse(text)

    yield scrape
    for server in servers.values():
        await server.close()
