"""One PBX's ingest: its AMI connection, its correlator, and where finished calls go.

Events are handled synchronously in the connection's reader, in arrival
order: listeners first (the router's busy tracking), then the correlator;
finished records go to `on_record`. After every login the PBX's devices (names
from the endpoints' caller ID) and queue members are asked (`discovery`) and
handed to the correlator. After every (re)connect the live
channels from CoreShowChannels reconcile the correlator, so calls that
moved while the link was down are neither lost nor counted twice. A bug
in a handler is logged and the stream goes on; it never drops the link.
An event the correlator cannot apply is counted in
`callhub_correlator_errors_total{pbx,event}` and logged once with its kind
and linkedid. Gaps: the time of the last event seen is kept in a state file under
`state_dir` (callhub.ami.gap); when a session starts after a gap (a restart, a
dropped link), `on_gap` gets it (the daemon rebuilds its calls from CEL), or,
without one, its seconds are counted in `callhub_gap_seconds_total`.
`seen_on_ami(linkedid)` says whether this process saw a call (open or
finished). The connection and the stale-call expiry run as supervised
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
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from callhub.ami.connection import AmiConnection
from callhub.ami.correlator import Correlator, event_time
from callhub.ami.discovery import Inventory
from callhub.ami.gap import (
    STATE_EVERY,
    UNDURABLE_MARGIN,
    Gap,
    StreamState,
    read_state,
    state_path,
    write_state,
)
from callhub.ami.parser import AmiMessage, EventFilter
from callhub.ami.read_classes import MISSING_CLASS_MEANS, WANTS, ReadClassWatch
from callhub.config import PbxConfig
from callhub.lifecycle import Retries, Supervisor, Task
from callhub.logs import mask_number
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord, bounded

log = structlog.get_logger(__name__)

RESYNC_SLICE = 500  # closed calls handed on between two yields to the event loop
SEEN_MEMORY = 100_000  # finished linkedids remembered for gap recovery
# A PBX clock this far off the host's is warned of (NTP keeps both within milliseconds;
# a minute shifts call times visibly); the warning clears under CLOCK_OK_SECONDS.
CLOCK_WARN_SECONDS = 60.0
CLOCK_OK_SECONDS = 30.0
NO_TIMESTAMPS = ("events carry no Timestamp (timestampevents = yes in manager.conf): "
                 "calls are timed when their events are read")
READ_CLASSES = "read = call,agent,dialplan"  # what the shipped manager.conf user reads


class PbxIngest:
    """AMI events of one PBX in, finished CallRecords out."""

    def __init__(self, pbx: PbxConfig, on_record: Callable[[CallRecord], None], *,
                 metrics: CallhubMetrics | None = None, stale_after: float = 14400.0,
                 clock: Callable[[], float] = time.time, ping_interval: float = 20.0,
                 backoff_max: float = 30.0, backoff_base: float = 0.5,
                 ping_timeout: float | None = None,
                 expire_interval: float = 60.0, supervisor: Supervisor | None = None,
                 state_dir: str | Path | None = None,
                 on_gap: Callable[[Gap], None] | None = None,
                 undurable_since: Callable[[], float | None] | None = None) -> None:
        self.pbx = pbx
        # The end of the earliest call handed on (`on_record`) that a crash would still
        # lose, or None: the state file's last event stays before it (callhub.ami.gap).
        self.undurable_since = undurable_since
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.on_record = on_record
        self.metrics = metrics
        # Children looked up once: the event path runs for every AMI message.
        self._events_counter = (metrics.ami_events.labels(pbx.name)
                                if metrics is not None else None)
        if metrics is not None:  # read when scraped, not written per event
            metrics.active_calls.labels(pbx.name).set_function(  # 0 on a pair's standby
                lambda: self.correlator.active_calls if metrics.counts(pbx.name) else 0)
            metrics.pbx_clock_offset.labels(pbx.name).set_function(self.clock_offset)
        self.clock = clock
        self.expire_interval = expire_interval
        self.correlator = Correlator(pbx, clock=clock, stale_after=stale_after)
        self.connection = AmiConnection(
            pbx, self._on_event, on_resync=self._on_resync,
            on_resync_start=self._resync_starts, on_inventory=self._on_inventory,
            on_malformed=self._on_malformed, on_state=self._on_state, on_read=self._on_read,
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
        self.read_classes = ReadClassWatch()  # the AMI user's read classes, judged
        self.add_listener(self._watch_read_classes, WANTS)
        self._events_counted = 0
        self._tasks: list[Task] = []
        self._had_session = False
        self.on_gap = on_gap
        self.state_file = state_path(state_dir, pbx.name) if state_dir is not None else None
        self.last_event: float | None = None  # the Timestamp of the last event seen
        self._last_stamp: str | None = None  # the last event's raw Timestamp, not parsed yet
        self._read_at = 0.0  # the host's clock when that event was read
        self._skew = 0.0  # the PBX's clock minus the host's, at the last event read
        self._clock_off = False  # warned that the PBX's clock is off (until it is right)
        self.unstamped = False  # the last event settled had no Timestamp header
        self._unstamped_said = False
        self.alive_until: float | None = None  # when the last session was last known up
        self._state_written = 0.0  # time.monotonic() of the last state write
        self.state_retries = Retries()  # the state file failing write after write
        self._seen: dict[str, None] = {}  # linkedids finished in this process (bounded)
        # Where the stream stopped before the next session (a previous run's state file,
        # or this process's last session): the gap that session ends starts there.
        self._stopped: StreamState | None = None
        if self.state_file is not None:
            self._stopped = read_state(self.state_file)
            if self._stopped is not None:
                self.last_event = self._stopped.last_event
                self.alive_until = self._stopped.alive_until

    def seen_on_ami(self, linkedid: str) -> bool:
        """Whether this process saw the call on AMI: open in the correlator, or finished."""
        return linkedid in self._seen or linkedid in self.correlator.calls

    def save_state(self) -> None:
        """Write the state file now (the last event seen, and that the session is up to now)."""
        self._settle_last_event()
        if self.state_file is None or self.last_event is None:
            return
        alive = self.clock() if self.connected else (self.alive_until or self.last_event)
        self._state_written = time.monotonic()
        last = self.last_event
        undurable = self.undurable_since() if self.undurable_since is not None else None
        if undurable is not None:  # killed now, that call is found again only in the gap
            last = min(last, undurable - UNDURABLE_MARGIN)
        write_state(self.state_file, StreamState(last, alive), self.state_retries)

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
        if self.connected:
            self.alive_until = self.clock()
        self.save_state()
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
        self._last_stamp = event.get("Timestamp", "")  # parsed once per read, not here
        for listener in self._listeners_of.get(event.get("Event", ""), self._every_event):
            try:
                listener(event)
            except Exception:
                log.exception("ami.listener_failed", pbx=self.pbx.name,
                              event_kind=event.get("Event"))
        errors = self.correlator.errors
        try:
            records = self.correlator.feed(event)
        except Exception:
            log.exception("correlator.feed_failed", pbx=self.pbx.name,
                          event_kind=event.get("Event"), linkedid=event.get("Linkedid"))
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

    def _on_inventory(self, inventory: Inventory) -> None:
        """Device names and queue members the PBX reported at login, for the correlator."""
        try:
            self.correlator.learn_devices(inventory.names, inventory.members)
        except Exception:
            log.exception("correlator.learn_devices_failed", pbx=self.pbx.name)

    def _resync_starts(self) -> None:
        """Open the correlator's resync window with when the last session ended, by the
        PBX's clock (as its events are timed): the calls the resync finds gone ended in
        the gap, and are closed at its start, not at the reconnect."""
        stopped = self._stopped
        self.correlator.begin_resync(
            None if stopped is None else stopped.alive_until + self.clock_offset())

    async def _on_resync(self, channels: list[AmiMessage]) -> None:
        try:
            records = self.correlator.reconcile_lazily(channels)
        except Exception:
            log.exception("correlator.reconcile_failed", pbx=self.pbx.name,
                          live_channels=len(channels))
            return
        closed = 0
        while True:
            try:  # the records are built slice by slice, between yields to the loop
                batch = list(itertools.islice(records, RESYNC_SLICE))
            except Exception:
                log.exception("correlator.reconcile_failed", pbx=self.pbx.name,
                              live_channels=len(channels))
                return
            if not batch:
                break
            if closed:
                await asyncio.sleep(0)  # let AMI, FastAGI and the API run in between
            closed += len(batch)
            self._emit(batch)
        log.info("ami.resynchronised", pbx=self.pbx.name, live_channels=len(channels),
                 closed_calls=closed, open_calls=self.correlator.active_calls)

    def _settle_last_event(self) -> None:
        """`last_event` from the last event's Timestamp (the host's clock without one)."""
        if self._last_stamp is not None:
            stamp = event_time(self._last_stamp) if self._last_stamp else None
            self.unstamped = not self._last_stamp
            self.last_event = stamp if stamp is not None else self.clock()
            if stamp is not None:
                self._skew = stamp - self._read_at
            self._last_stamp = None

    def pbx_now(self) -> float:
        """Now by the PBX's clock, which stamps its events: the host's clock moved by how
        far the two were apart at the last event read. Calls go stale by it: a PBX whose
        clock is hours off (local time taken for UTC) must not have every call in
        progress closed as stale at the next expiry."""
        self._settle_last_event()
        return self.clock() + self._skew

    def clock_offset(self) -> float:
        """The PBX's clock minus this host's, from the last event read (0 before any):
        calls are timed by the PBX's clock, so hourly figures and SMS delays move by it."""
        self._settle_last_event()
        return self._skew

    def check_clock(self) -> None:
        """Warn once when the PBX's clock is `CLOCK_WARN_SECONDS` off this host's; say
        when it is right again (under `CLOCK_OK_SECONDS`). Warn once, and name it in the
        part's detail while it lasts, when events come without a Timestamp
        (manager.conf's `timestampevents` is off): calls are then timed when their
        events are read, and a burst read late shortens their rings."""
        offset = self.clock_offset()
        self._show_detail()
        if self.unstamped and not self._unstamped_said:
            self._unstamped_said = True
            log.warning("ami.no_timestamps", pbx=self.pbx.name,
                        hint="set timestampevents = yes for callhub's user in Asterisk's "
                             "manager.conf: calls are timed when their events are read")
        if not self._clock_off and abs(offset) >= CLOCK_WARN_SECONDS:
            self._clock_off = True
            log.warning("ami.clock_offset", pbx=self.pbx.name, offset_seconds=round(offset, 1),
                        hint="the PBX's clock and this host's differ: call times, hourly "
                             "figures and SMS delays follow the PBX's; set both by NTP")
        elif self._clock_off and abs(offset) < CLOCK_OK_SECONDS:
            self._clock_off = False
            log.info("ami.clock_offset_ok", pbx=self.pbx.name,
                     offset_seconds=round(offset, 1))

    def _on_read(self, skipped: int) -> None:
        """After each TCP read: events nobody reads (skipped unparsed) count like every
        other, and the counter is moved once per read, not once per event (a Prometheus
        increment takes a lock: ~0.7 µs, 5 % of an event's cost); the state file is
        brought up to date every STATE_EVERY seconds."""
        if self._last_stamp is not None:
            self._read_at = self.clock()
        if (self.state_file is not None and self._last_stamp is not None
                and time.monotonic() - self._state_written >= STATE_EVERY):
            self.save_state()
        self.events += skipped
        if self._events_counter is not None and self.events != self._events_counted:
            self._events_counter.inc(self.events - self._events_counted)
            self._events_counted = self.events

    def _on_malformed(self, count: int) -> None:
        self.malformed += count
        if self.metrics is not None:
            self.metrics.ami_malformed.labels(self.pbx.name).inc(count)

    def _watch_read_classes(self, event: AmiMessage) -> None:
        """Warn when the events show that the AMI user lacks a class callhub reads (its
        calls would be stored wrong), and name it in the part's detail until its events
        come; say when they do."""
        before = set(self.read_classes.missing)
        if not self.read_classes.seen(event):
            return
        for lacking in sorted(self.read_classes.missing - before):
            log.warning("ami.read_class_missing", pbx=self.pbx.name, read_class=lacking,
                        hint=f"{MISSING_CLASS_MEANS[lacking]}; give callhub's user in "
                             f"Asterisk's manager.conf `{READ_CLASSES}`, then run "
                             f"`manager reload`")
        for back in sorted(before - self.read_classes.missing):
            log.info("ami.read_class_back", pbx=self.pbx.name, read_class=back)
        self._show_detail()

    def _show_detail(self) -> None:
        """The `ami/<pbx>` part's detail: what is wrong with the events, whatever the
        link's state (no timestamps, read classes missing); None when nothing is."""
        notes = [NO_TIMESTAMPS] if self.unstamped else []
        if self.read_classes.missing:
            notes.append(f"the AMI user seems to lack the read class "
                         f"{', '.join(sorted(self.read_classes.missing))} ({READ_CLASSES} "
                         f"in manager.conf): calls are stored wrong meanwhile")
        detail = "; ".join(notes) or None
        if self._tasks and self._tasks[0].health.detail != detail:
            self._tasks[0].health.detail = detail

    def _on_state(self, up: bool) -> None:
        reconnected = up and self._had_session
        self._had_session = self._had_session or up
        if up:
            self.read_classes.new_session()
            self._gap_ended()
        else:
            self.alive_until = self.clock()
            self.save_state()
            if self.last_event is not None:
                self._stopped = StreamState(self.last_event, self.alive_until)
        if self.metrics is None:
            return
        self.metrics.ami_connected.labels(self.pbx.name).set(1 if up else 0)
        if reconnected:
            self.metrics.ami_reconnects.labels(self.pbx.name).inc()

    def _gap_ended(self) -> None:
        """The session is up: hand on the gap since the last event seen before it (if any)."""
        now = self.clock()
        stopped, self._stopped = self._stopped, None
        self.alive_until = now
        if stopped is None:
            return  # the first session ever: nothing was seen before, no gap is known
        gap = Gap(stopped.last_event, stopped.alive_until, now)
        self.save_state()
        log.info("ami.gap", pbx=self.pbx.name, gap_seconds=round(gap.seconds, 3))
        if self.on_gap is not None:
            try:
                self.on_gap(gap)
            except Exception:
                log.exception("ingest.on_gap_failed", pbx=self.pbx.name)
        elif self.metrics is not None:
            self.metrics.gap_seconds.labels(self.pbx.name).inc(gap.seconds)

    def _emit(self, records: list[CallRecord]) -> None:
        for record in records:
            self.records += 1
            self._seen[record.linkedid] = None
            if len(self._seen) > SEEN_MEMORY:
                del self._seen[next(iter(self._seen))]
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
        """`expire_stale` and `check_clock` every `expire_interval` seconds."""
        while True:
            await asyncio.sleep(self.expire_interval)
            self.expire_stale()
            self.check_clock()

    def expire_stale(self) -> None:
        """Close calls whose events stopped `stale_after` ago (by the PBX's clock) as
        incomplete."""
        try:
            records = self.correlator.expire(self.pbx_now())
        except Exception:
            log.exception("correlator.expire_failed", pbx=self.pbx.name)
            return
        self._emit(records)
