"""A running callhub (the daemon: ingestion, writer, worklist, API) scraped at GET /metrics.

Each recording PBX gets an AMI simulator on a loopback port; the daemon logs
in to both, the traces are sent, and /metrics is fetched from the daemon's own
API over HTTP with the configured metrics token. Counts, buckets, reasons,
attempts and windows are compared with the traces' `.json` ground truth; the
worklist gauges and the callback histogram with the worklist DESIGN.md defines
from the same ground truth; AMI counters with what the simulators sent.
"""

from __future__ import annotations

import asyncio
import io
import math
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from metrics_fixtures import (
    TIMEZONE,
    Clock,
    Scrape,
    Truth,
    check_totals,
    expected_windows,
    load,
)

from callhub import __version__, loops
from callhub.ami import native
from callhub.config import settings_from_mapping
from callhub.daemon import Daemon, running
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord
from callhub.sim.ami_server import AmiSimulator

METRICS_TOKEN = "metrics-token-1"


class WatchedMetrics(CallhubMetrics):
    """CallhubMetrics that wakes the test whenever the worklist gauges are set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()

    def set_worklist(self, pending: int, oldest_pending_at: float | None) -> None:
        super().set_worklist(pending, oldest_pending_at)
        task = asyncio.get_running_loop().create_task(self._notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


def expected_worklist(truths: list[Truth]) -> tuple[int, int]:
    """(still pending, handled by a callback) by DESIGN.md's worklist rules.

    A missed or abandoned inbound call (short abandons not included, the default)
    opens an entry for the caller's number; an answered outbound call to that number
    afterwards, or an answered inbound call from it afterwards, handles it.
    """
    def time_of(t: Truth) -> float:
        return t.arrived

    entries = [t for t in truths if t.inbound and t.call["outcome"] in ("missed", "abandoned")
               and not t.call["short_abandon"]]
    handled = 0
    for entry in entries:
        number = entry.call["caller_number"]
        later = [t for t in truths if time_of(t) > time_of(entry) and t.answered and (
            (t.inbound and t.call.get("caller_number") == number)
            or (t.call["direction"] == "outbound" and t.call.get("called_number") == number))]
        handled += bool(later)
    return len(entries) - handled, handled


async def test_running_daemon_serves_the_ground_truth(tmp_path: Path) -> None:
    traces = load()
    truths = traces.truths
    clock = Clock()
    sims = {name: AmiSimulator(username="callhub", secret=f"ami-secret-{name}")
            for name in traces.files}
    for sim in sims.values():
        await sim.start()
    try:
        pbx_tables = [{**traces.configs[name], "host": "127.0.0.1", "port": sim.port,
                       "username": "callhub", "secret": sim.secret}
                      for name, sim in sims.items()]
        settings = settings_from_mapping({
            "timezone": TIMEZONE,
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'callhub.db'}",
            "spool_dir": str(tmp_path / "spool"),
            "api": {"listen": "127.0.0.1:0", "metrics_token": METRICS_TOKEN},
            "fastagi": {"listen": "127.0.0.1:0"},
            "pbx": pbx_tables,
        })
        metrics = WatchedMetrics.from_settings(settings, clock=clock)
        assert isinstance(metrics, WatchedMetrics)
        daemon = Daemon(settings, metrics=metrics, out=io.StringIO())
        records: list[CallRecord] = []
        all_in = asyncio.Event()

        def arrived(record: CallRecord) -> None:
            # Runs before the daemon's own callbacks: the clock is at the call's end
            # when the metrics see it, as in a live run.
            clock.now = record.ended_at
            records.append(record)
            if len(records) == len(truths):
                all_in.set()

        daemon.on_record.append(arrived)
        async with running(daemon):
            for ingest in daemon.ingests.values():
                await ingest.wait_connected(10.0)
            for name, sim in sims.items():
                for path in traces.files[name]:
                    await sim.replay(path, speed=None)
            await asyncio.wait_for(all_in.wait(), 30.0)
            pending, handled = expected_worklist(truths)

            def settled() -> bool:
                sample = metrics.registry.get_sample_value
                return (sample("callhub_worklist_pending") == pending
                        and sample("callhub_callback_seconds_count") == handled
                        and daemon.writer is not None and daemon.writer.written == len(truths))

            async with metrics.changed:
                await asyncio.wait_for(metrics.changed.wait_for(settled), 30.0)

            clock.now = math.ceil(max(r.ended_at for r in records) / 60) * 60
            assert daemon.api_url
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{daemon.api_url}/metrics") as resp:
                    assert resp.status == 401
                async with session.get(f"{daemon.api_url}/metrics", headers={
                        "Authorization": f"Bearer {METRICS_TOKEN}"}) as resp:
                    assert resp.status == 200
                    scrape = Scrape.parse(await resp.text())

        assert sorted(r.linkedid for r in records) == sorted(t.call["linkedid"] for t in truths)
        check_totals(scrape, truths)
        for name, sim in sims.items():
            assert scrape.value("callhub_ami_connected", pbx=name) == 1
            assert scrape.value("callhub_ami_events_total", pbx=name) == (
                sim.events_sent + sim.stats.logins)
            assert scrape.value("callhub_ami_malformed_total", pbx=name) == 0
            assert scrape.value("callhub_active_calls", pbx=name) == 0
        assert scrape.value("callhub_worklist_pending") == pending
        assert scrape.value("callhub_callback_seconds_count") == handled
        assert scrape.value("callhub_db_buffered_calls") == 0
        assert scrape.value("callhub_db_write_errors_total") == 0
        assert scrape.value("callhub_build_info", version=__version__,
                            ami_hot_path=native.CHOSEN.runs,
                            event_loop=loops.kind(asyncio.get_running_loop())) == 1
        finished = {r.linkedid for r in records}
        for (pbx, window), (counted, lo, hi) in expected_windows(
                truths, finished, clock.now).items():
            assert scrape.value("callhub_answered_within_rings_calls", pbx=pbx,
                                window=window) == counted
            ratio = scrape.value("callhub_answered_within_rings_ratio", pbx=pbx, rings="3",
                                 window=window)
            if counted:
                assert ratio is not None and lo / counted <= ratio <= hi / counted
            else:
                assert ratio is None
        assert pending > 0 and handled > 0, "the traces should exercise both"
    finally:
        for sim in sims.values():
            await sim.stop()


@pytest.fixture(autouse=True)
def _no_routing_state_in_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Routing keeps its state under the spool (in tmp_path) unless told otherwise."""
    monkeypatch.delenv("CALLHUB_ROUTING_STATE_DIR", raising=False)
