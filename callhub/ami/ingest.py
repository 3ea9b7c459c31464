"""One PBX's ingest: its AMI connection, its correlator, and where finished calls go.

Events are handled synchronously in the connection's reader, in arrival
order: listeners first (the router's busy tracking), then the correlator;
finished records go to `on_record`. After every (re)connect the live
channels from CoreShowChannels reconcile the correlator, so calls that
moved while the link was down are neither lost nor counted twice. A bug
in a handler is logged and the stream goes on; it never drops the link.
An event the correlator cannot apply is counted in
`callhub_correlator_errors_total{pbx,event}` and logged once with its kind
and linkedid. The connection and the stale-call expiry run as supervised
tasks (parts `ami/<pbx>` and `ami/<pbx>/expiry`); `ami/<pbx>` is ready while
logged in. Several PBXs are several PbxIngest objects.

Only the events someone reads are parsed: the correlator's and those of each
listener's `EventFilter` (a listener without one gets every event). The rest are
counted in `callhub_ami_events_total` all the same. Calls closed by one resync
are handed on in slices of `RESYNC_SLICE`, yielding to the loop between them, so
closing tens of thousands of calls at once does not stall AMI, FastAGI or the API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from callhub.ami.connection import AmiConnection
from callhub.ami.correlator import Correlator
from callhub.ami.parser import AmiMessage, EventFilter
from callhub.config import PbxConfig
from callhub.lifecycle import Supervisor, Task
from callhub.logs import mask_number
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord, bounded

log = structlog.get_logger(__name__)

RESYNC_SLICE = 500  # closed calls handed on between two yields to the event loop


class PbxIngest:
    """AMI events of one PBX in, finished CallRecords out."""

    def __init__(self, pbx: PbxConfig, on_record: Callable[[CallRecord], None], *,
                 metrics: CallhubMetrics | None = None, stale_after: float = 14400.0,
                 clock: Callable[[], float] = time.time, ping_interval: float = 20.0,
                 backoff_max: float = 30.0, backoff_base: float = 0.5,
                 ping_timeout: float | None = None,
                 expire_interval: float = 60.0, supervisor: Supervisor | None = None) -> None:
        self.pbx = pbx
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.on_record = on_record
        self.metrics = metrics
        # Children looked up once: the event path runs for every AMI message.
        self._events_counter = (metrics.ami_events.labels(pbx.name)
                                if metrics is not None else None)
        if metrics is not None:  # read when scraped, not written per event
            metrics.active_calls.labels(pbx.name).set_function(
                lambda: self.correlator.active_calls)
        self.clock = clock
        self.expire_interval = expire_interval
        self.correlator = Correlator(pbx, clock=clock, stale_after=stale_after)
        self.connection = AmiConnection(
            pbx, self._on_event, on_resync=self._on_resync,
            on_resync_start=self.correlator.begin_resync, on_malformed=self._on_malformed,
            on_state=self._on_state, on_read=self._on_read,
            event_filter=self.correlator.event_filter(),
            ping_interval=ping_interval, ping_timeout=ping_timeout,
            backoff_base=backoff_base, backoff_max=backoff_max)
        self.events = 0
        self.malformed = 0
        self.records = 0
        self._listeners: list[tuple[Callable[[AmiMessage], None], EventFilter | None]] = []
        # Who gets which event, in the order they were added: per event name, and the
        # listeners of every event for the names no filter lists.
        self._listeners_of: dict[str, list[Callable[[AmiMessage], None]]] = {}
        self._every_event: list[Callable[[AmiMessage], None]] = []
        self._events_counted = 0
        self._tasks: list[Task] = []
        self._had_session = False

    @property
    def connected(self) -> bool:
        """Logged in and resynchronised."""
        return self.connection.connected

    def add_listener(self, fn: Callable[[AmiMessage], None],
                     wants: EventFilter | None = None) -> None:
        """Call fn with the events `wants` names (every event when None), before the
        correlator sees them."""
        self._listeners.append((fn, wants))
        self._every_event = [f for f, w in self._listeners if w is None]
        names = {name for _, w in self._listeners if w is not None for name in w.events}
        self._listeners_of = {name: [f for f, w in self._listeners
                                     if w is None or name in w.events] for name in names}
        wanted: EventFilter | None = self.correlator.event_filter()
        for _, each in self._listeners:
            wanted = None if wanted is None or each is None else wanted | each
        self.connection.event_filter = wanted

    async def start(self) -> None:
        """Start connecting (and reconnecting) in the background; returns at once."""
        if self._tasks:
            return
        part = f"ami/{self.pbx.name}"
        self._tasks = [
            self.supervisor.spawn(part, self.connection.run, check=self._link_state),
            self.supervisor.spawn(f"{part}/expiry", self._expire_loop),
        ]

    async def stop(self) -> None:
        """Disconnect and stop; open calls stay in the correlator."""
        for task in reversed(self._tasks):
            await task.stop()
        self._tasks = []
        self.connection.drop()
        if self.metrics is not None:
            self.metrics.ami_connected.labels(self.pbx.name).set(0)

    async def _link_state(self) -> str | None:
        """The `ami/<pbx>` part's check: ready while logged in and resynchronised."""
        if self.connected:
            return None
        last = self.connection.last_error
        return f"AMI not connected ({last})" if last else "AMI not connected"

    async def wait_connected(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        await self.connection.wait_connected(timeout)

    # -- handlers (run inside the reader, in order) -------------------------

    def _on_event(self, event: AmiMessage) -> None:
        self.events += 1
        for listener in self._listeners_of.get(event.get("Event", ""), self._every_event):
            try:
                listener(event)
            except Exception:
                log.exception("ami.listener_failed", pbx=self.pbx.name,
                              event=event.get("Event"))
        errors = self.correlator.errors
        try:
            records = self.correlator.feed(event)
        except Exception:
            log.exception("correlator.feed_failed", pbx=self.pbx.name,
                          event=event.get("Event"), linkedid=event.get("Linkedid"))
            return
        if self.correlator.errors != errors:
            self._correlator_error(event)
        if records:
            self._emit(records)

    def _correlator_error(self, event: AmiMessage) -> None:
        """An event the correlator could not apply (it skipped it): count and log it once."""
        kind = event.get("Event", "")
        if self.metrics is not None:
            self.metrics.correlator_error(self.pbx.name, kind)
        error = self.correlator.last_error
        log.warning("correlator.event_failed", pbx=self.pbx.name, event_kind=kind,
                    linkedid=event.get("Linkedid"),
                    error=type(error).__name__ if error is not None else None)

    async def _on_resync(self, channels: list[AmiMessage]) -> None:
        try:
            records = self.correlator.reconcile(channels)
        except Exception:
            log.exception("correlator.reconcile_failed", pbx=self.pbx.name,
                          live_channels=len(channels))
            return
        log.info("ami.resynchronised", pbx=self.pbx.name, live_channels=len(channels),
                 closed_calls=len(records), open_calls=self.correlator.active_calls)
        for start in range(0, len(records), RESYNC_SLICE):
            if start:
                await asyncio.sleep(0)  # let AMI, FastAGI and the API run in between
            self._emit(records[start:start + RESYNC_SLICE])

    def _on_read(self, skipped: int) -> None:
        """After each TCP read: events nobody reads (skipped unparsed) count like every
        other, and the counter is moved once per read, not once per event (a Prometheus
        increment takes a lock: ~0.7 µs, 5 % of an event's cost)."""
        self.events += skipped
        if self._events_counter is not None and self.events != self._events_counted:
            self._events_counter.inc(self.events - self._events_counted)
            self._events_counted = self.events

    def _on_malformed(self, count: int) -> None:
        self.malformed += count
        if self.metrics is not None:
            self.metrics.ami_malformed.labels(self.pbx.name).inc(count)

    def _on_state(self, up: bool) -> None:
        reconnected = up and self._had_session
        self._had_session = self._had_session or up
        if self.metrics is None:
            return
        self.metrics.ami_connected.labels(self.pbx.name).set(1 if up else 0)
        if reconnected:
            self.metrics.ami_reconnects.labels(self.pbx.name).inc()

    def _emit(self, records: list[CallRecord]) -> None:
        for record in records:
            self.records += 1
            record = bounded(record)  # PBX values cut to their columns where they enter
            log.info("call.finished", pbx=record.pbx, linkedid=record.linkedid,
                     direction=record.direction, outcome=record.outcome, rings=record.rings,
                     caller=mask_number(record.caller_number), agent=record.agent)
            try:
                self.on_record(record)
            except Exception:
                log.exception("ingest.on_record_failed", pbx=self.pbx.name,
                              linkedid=record.linkedid)

    async def _expire_loop(self) -> None:
        """Close calls whose events stopped (stale_after) as incomplete."""
        while True:
            await asyncio.sleep(self.expire_interval)
            try:
                records = self.correlator.expire(self.clock())
            except Exception:
                log.exception("correlator.expire_failed", pbx=self.pbx.name)
                continue
            self._emit(records)
