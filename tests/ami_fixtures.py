"""AMI test fixtures: a running AmiSimulator and helpers to point callhub at it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from callhub.ami.groundtruth import compare
from callhub.ami.ingest import PbxIngest
from callhub.config import PbxConfig, settings_from_mapping
from callhub.records import CallRecord
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import SynthCall
from callhub.sim.templates import load_template

SIM_USER = "callhub"
SIM_SECRET = "s3cret-for-tests"


@pytest.fixture
async def ami_simulator() -> AsyncIterator[AmiSimulator]:
    """An AmiSimulator listening on a free loopback port (its `port` is set)."""
    sim = AmiSimulator(username=SIM_USER, secret=SIM_SECRET)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def sim_pbx(sim: AmiSimulator, template: str = "01_answered_caller_hangup",
            **overrides: Any) -> PbxConfig:
    """The lab PBX settings of a template's ground truth, pointed at the simulator."""
    truth_config = dict(load_template(template).config)
    truth_config.update(host=sim.host, port=sim.port, username=SIM_USER, secret=SIM_SECRET)
    pbx = settings_from_mapping({"pbx": [truth_config]}).pbxs[0]
    return replace(pbx, **overrides)


class Collector:
    """Finished records and events of one PbxIngest, with waits instead of sleeps."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []
        self.events: list[dict[str, str]] = []
        self._changed = asyncio.Event()

    def record(self, record: CallRecord) -> None:
        self.records.append(record)
        self._changed.set()

    def event(self, event: dict[str, str]) -> None:
        self.events.append(event)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        async def _wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(_wait(), within)

    def linkedids(self) -> list[str]:
        return [r.linkedid for r in self.records]


def make_ingest(pbx: PbxConfig, collector: Collector, **kwargs: Any) -> PbxIngest:
    ingest = PbxIngest(pbx, collector.record, **kwargs)
    ingest.add_listener(collector.event)
    return ingest


def compare_synth(records: list[CallRecord], calls: list[SynthCall],
                  tolerance: float = 0.5) -> list[str]:
    """Differences between records and what the synthetic calls should have produced."""
    truth = {"expected": {"calls": [c.expected for c in calls],
                          "tolerance": {"seconds": tolerance}}}
    return compare(records, truth)
