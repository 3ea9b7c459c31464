"""Calls of a gap in the AMI stream, rebuilt from Asterisk's CEL table and stored if absent.

When callhub was down or its AMI session was, nobody saw the calls that began
and ended meanwhile; cel_pgsql wrote their channel events all the same. After
the session is back, the CEL rows of [last event seen, reconnect] are read and
interpreted (callhub.ami.cel). Of the rebuilt calls, those still live (no
LINKEDID_END yet) are the AMI session's (its resync adopted them), and those
the correlator has open or finished in this process were seen on AMI: both
are dropped. The rest go to the writer flagged `source = "cel"`, which stores
a CEL record only where no record of its call is (store.save).

A gap waits in `pending` until its rows were read: a CEL database that is
down is retried (the supervised task restarts with backoff). A gap still
pending when callhub stops is counted in `callhub_gap_seconds_total` and
logged, since nothing will rebuild it (`callhub backfill --store` can).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from callhub.ami.cel import interpret
from callhub.ami.gap import Gap
from callhub.config import PbxConfig
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord, bounded
from callhub.store.cel_source import read_cel

log = structlog.get_logger(__name__)

SETTLE_SECONDS = 2.0  # let cel_pgsql insert the rows of the moments before the reconnect


async def rebuild(url: str, table: str, pbx: PbxConfig, start: datetime,
                  end: datetime) -> list[CallRecord]:
    """The calls with a CEL row in [start, end), rebuilt (incomplete ones included)."""
    rows = await read_cel(url, start=start, end=end, table=table)
    return [bounded(record) for record in interpret(rows, pbx)]


def when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class CelRecovery:
    """One PBX's gap recovery: `gap()` queues a gap, `run()` (supervised) rebuilds them."""

    def __init__(self, pbx: PbxConfig, submit: Callable[[CallRecord], None], *,
                 seen_on_ami: Callable[[str], bool], metrics: CallhubMetrics | None = None,
                 settle_seconds: float = SETTLE_SECONDS) -> None:
        assert pbx.cel_database_url is not None
        self.pbx = pbx
        self.url = pbx.cel_database_url
        self.submit = submit
        self.seen_on_ami = seen_on_ami
        self.metrics = metrics
        self.settle_seconds = settle_seconds
        self.pending: list[Gap] = []
        self.recovered = 0  # calls handed to the writer so far
        self.gaps_done = 0
        self._wake = asyncio.Event()
        self._done = asyncio.Event()

    def gap(self, gap: Gap) -> None:
        """A gap ended (the AMI session is back): rebuild its calls in the background."""
        self.pending.append(gap)
        self._done.clear()
        self._wake.set()

    async def run(self) -> None:
        """Rebuild the pending gaps one by one, until cancelled; a failure leaves the gap
        pending (the supervisor restarts this with backoff)."""
        while True:
            while self.pending:
                await self._recover(self.pending[0])
                self.pending.pop(0)
                self.gaps_done += 1
            self._done.set()
            self._wake.clear()
            await self._wake.wait()

    async def wait_idle(self) -> None:
        """Until no gap is pending (tests; wrap in a timeout)."""
        await self._done.wait()

    def close(self) -> None:
        """Stopping: the gaps not rebuilt are lost to this process; count and say so."""
        for gap in self.pending:
            if self.metrics is not None:
                self.metrics.gap_seconds.labels(self.pbx.name).inc(gap.seconds)
            log.warning("cel.gap_unrecovered", pbx=self.pbx.name, gap_seconds=round(gap.seconds, 3),
                        start=when(gap.last_event).isoformat(), end=when(gap.until).isoformat(),
                        hint="run `callhub backfill --store` for this window")
        self.pending = []

    async def _recover(self, gap: Gap) -> None:
        await asyncio.sleep(self.settle_seconds)
        records = await rebuild(self.url, self.pbx.cel_table, self.pbx, when(gap.last_event),
                                when(gap.until))
        live = [r for r in records if r.incomplete]
        seen = [r for r in records if not r.incomplete and self.seen_on_ami(r.linkedid)]
        kept = [r for r in records if not r.incomplete and not self.seen_on_ami(r.linkedid)]
        for record in kept:
            self.submit(record)
        self.recovered += len(kept)
        if self.metrics is not None:
            self.metrics.cel_recovered_calls.labels(self.pbx.name).inc(len(kept))
        log.info("cel.recovered", pbx=self.pbx.name, gap_seconds=round(gap.seconds, 3),
                 start=when(gap.last_event).isoformat(), end=when(gap.until).isoformat(),
                 rebuilt=len(records), live=len(live), seen_on_ami=len(seen),
                 recovered=len(kept))
