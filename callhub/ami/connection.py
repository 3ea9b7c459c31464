"""One AMI connection that stays up: log in, resynchronise, ping, reconnect with backoff.

panoramisk 1.4 does the AMI request/response bookkeeping (`Action` ids,
multi-message event lists such as CoreShowChannels, `Message` types). Two
things in it are replaced here, kept small:

* `AMIProtocol.data_received` decodes every TCP read on its own with errors
  ignored, so a UTF-8 character split across two reads is lost. This
  protocol feeds bytes to `MessageSplitter`, which decodes complete messages
  only, and counts malformed ones instead of dropping them silently.
* `Manager.connect` and `Action` lean on `asyncio.get_event_loop()` and
  reconnect on a fixed timer without noticing a dead peer. Here the running
  loop is passed explicitly and `AmiConnection.run` owns the life cycle:
  capped exponential backoff with jitter (back to its base after a session
  that synced and lasted `stable_after` seconds), a Ping whose answer, or at
  least some bytes, must come within `ping_timeout` (a reader behind its PBX
  reads its Pong late), and `CoreShowChannels` after every login so the
  caller can reconcile calls that moved while the link was down.

What fails is said so that a PBX admin knows what to mend: a connect nobody
answers names host:port, a peer whose first line is not AMI's (a wrong port: an
HTTP or SSH server) is `AmiNotAmi`, and a setting of theirs carries a `hint`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from panoramisk import Manager
from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from callhub.ami.discovery import Inventory, discover
from callhub.ami.parser import AmiMessage, EventFilter, MessageSplitter
from callhub.config import PbxConfig
from callhub.lifecycle import Retries, backoff_delay

log = structlog.get_logger(__name__)

EventHandler = Callable[[AmiMessage], None]
ResyncHandler = Callable[[list[AmiMessage]], Awaitable[None] | None]
RawListener = Callable[[bytes], None]


class AmiError(Exception):
    """The AMI peer refused or broke the session."""

    hint: str | None = None  # what the admin should check, when it is a setting of theirs


class AmiAuthError(AmiError):
    """Login refused (wrong username or secret, or this host not let in by the user's
    `permit`: Asterisk answers both "Authentication failed"). The message never holds the
    secret."""

    hint = ("check username and secret in [[pbx]] against manager.conf, and that the "
            "user's permit= lets this host in")


class AmiConnectionLost(AmiError):
    """The TCP connection closed or stopped answering pings."""


class AmiNotAmi(AmiError):
    """The peer at host:port is some other server (HTTP, SSH, ...): a wrong port, most
    likely. Logged at error with what to check, and still retried with backoff like any
    failure: one PBX's wrong setting must not stop the daemon, and the others' calls."""

    hint = "check host and port in [[pbx]]: AMI listens on manager.conf's port (5038)"


class AmiRefused(AmiError):
    """The PBX refused an action callhub needs after login (`Permission denied`: the
    user's `write =` lacks its class). Logged at error with what to set; retried with
    backoff, since a `manager reload` mends it without restarting callhub."""

    def __init__(self, action: str, reason: str, hint: str | None = None) -> None:
        super().__init__(f"{action} refused: {reason}")
        if reason == "Permission denied" and hint is not None:
            self.hint = hint


GREETING_BYTES = 256  # Asterisk's greeting is one short line: "Asterisk Call Manager/x.y.z"


class CallhubAmiProtocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's protocol with byte-level message splitting."""

    def __init__(self, manager: AmiManager) -> None:
        self._manager = manager

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Set here, not after create_connection returns: the banner may arrive first.
        self.factory = self._manager
        self.log = self._manager.log
        self.encoding = "utf-8"
        self.splitter = MessageSplitter(wanted=self._manager.event_filter)
        self.bytes_received = 0
        self._head: bytes | None = b""  # the first line's bytes until it is judged
        self.foreign: str | None = None  # that line, when it is not AMI's

    def data_received(self, data: bytes) -> None:
        factory: AmiManager = self.factory
        self.bytes_received += len(data)
        for listener in factory.raw_listeners:
            listener(data)
        if self._head is not None and self._foreign_greeting(data):
            return
        splitter = self.splitter
        malformed_before, skipped_before = splitter.malformed, splitter.skipped
        messages = splitter.feed(data)
        if splitter.banner and getattr(self, "version", None) is None:
            self.version: str | None = splitter.banner.partition("/")[2].strip()
        if splitter.malformed != malformed_before:
            factory.malformed(splitter.malformed - malformed_before)
        skipped = splitter.skipped - skipped_before
        responses = self.responses
        for raw in messages:
            # Plain events go straight to the manager: wrapping each in panoramisk's
            # case-insensitive Message costs more than correlating it. Replies, event
            # lists of a pending action (CoreShowChannel) and Shutdown take its path.
            if ("Event" in raw and raw["Event"] != "Shutdown"
                    and raw.get("ActionID") not in responses):
                factory.on_event(raw)
                continue
            message = Message(raw)
            message.raw = raw  # the plain dict, keys as sent: what callhub consumes
            self.handle_message(message)
        factory.on_read(skipped)

    def _foreign_greeting(self, data: bytes) -> bool:
        """Judge the peer by its first line: Asterisk's greeting, or an AMI header (a peer
        that greets with nothing). Anything else (an HTTP status line after the Login,
        SSH's greeting) is another server: the connection is closed and `foreign` says
        what it sent, instead of counting its lines as malformed AMI at every retry."""
        head = (self._head or b"") + data
        end = head.find(b"\n")
        if end < 0 and len(head) < GREETING_BYTES:
            self._head = head
            return False
        self._head = None
        line = head[:end if end >= 0 else GREETING_BYTES].rstrip(b"\r")
        if not line.strip() or line.startswith(b"Asterisk Call Manager") or b": " in line:
            return False
        text = line.decode("utf-8", "replace")[:80]
        self.foreign = "".join(c if c.isprintable() else "?" for c in text)
        self.transport.close()
        return True

    def send(self, data: Any, as_list: bool | None = None) -> asyncio.Future[Any]:
        """panoramisk's send without its exception log, which would print the Login secret."""
        action: Action = data
        action.as_list = as_list
        self.responses[action.id] = action
        self.transport.write(str(action).encode("utf-8"))
        future: asyncio.Future[Any] = action.future
        return future


class AmiManager(Manager):  # type: ignore[misc]
    """panoramisk's Manager as the protocol's factory, with one connection per instance.

    It does no reconnecting of its own: `connection_lost` resolves `lost`,
    and `AmiConnection` decides what happens next.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, pbx: PbxConfig,
                 on_event: EventHandler, on_malformed: Callable[[int], None],
                 raw_listeners: list[RawListener],
                 event_filter: EventFilter | None = None,
                 on_read: Callable[[int], None] = lambda skipped: None) -> None:
        super().__init__(host=pbx.host, port=pbx.port, loop=loop, encoding="utf-8",
                         protocol_factory=CallhubAmiProtocol)
        self.on_event = on_event
        self.on_malformed = on_malformed
        self.on_read = on_read
        self.event_filter = event_filter
        self.raw_listeners = raw_listeners
        self.lost: asyncio.Future[None] = loop.create_future()

    async def open(self, username: str, secret: str, within: float) -> None:
        """TCP connect and Login; AmiAuthError when the PBX refuses the credentials."""
        host, port = self.config["host"], self.config["port"]
        try:
            async with asyncio.timeout(within):
                _transport, protocol = await self.loop.create_connection(
                    lambda: CallhubAmiProtocol(self), host, port)
        except TimeoutError:
            # A host that drops the SYN (a firewall, a wrong address) says nothing: its
            # TimeoutError has no message, and "TimeoutError" alone told the admin nothing.
            raise TimeoutError(f"no TCP connection to {host}:{port} within {within:g} s "
                               f"(nothing answered: a wrong host, or a firewall dropping "
                               f"it)") from None
        self.encoding = "utf-8"
        self.protocol = protocol
        self.responses = protocol.responses
        self._connected = True
        try:
            response = await self.request({"Action": "Login", "Username": username,
                                           "Secret": secret, "Events": "on"}, within)
        except (AmiConnectionLost, TimeoutError) as exc:
            if protocol.foreign is not None:
                raise AmiNotAmi(f"{host}:{port} is not Asterisk's AMI: it said "
                                f"{protocol.foreign!r}") from None
            if isinstance(exc, TimeoutError) and protocol.bytes_received == 0:
                raise TimeoutError(f"{host}:{port} took the connection but sent nothing "
                                   f"within {within:g} s: no AMI greeting, no answer to "
                                   f"Login (Asterisk hung, or not its AMI port)") from None
            raise
        if not response.success:
            reason = response.get("Message", "") or response.get("Response", "")
            raise AmiAuthError(f"login as {username!r} refused: {reason}")
        self.authenticated = True

    def action(self, fields: dict[str, str]) -> Action:
        """A panoramisk Action whose future belongs to this manager's loop."""
        action = Action(fields)
        action.future = self.loop.create_future()
        return action

    async def request(self, fields: dict[str, str], within: float) -> Any:
        """Send an action; its response (a Message, or a list for event lists).

        Raises TimeoutError when no answer comes in time and AmiConnectionLost
        when the connection goes first.
        """
        if self.lost.done():
            raise AmiConnectionLost("connection closed")
        future = self.protocol.send(self.action(fields))
        done, _ = await asyncio.wait({future, self.lost}, timeout=within,
                                     return_when=asyncio.FIRST_COMPLETED)
        if future in done:
            return future.result()
        future.cancel()
        if self.lost.done():
            raise AmiConnectionLost(f"connection closed while waiting for {fields['Action']}")
        raise TimeoutError(f"no answer to {fields['Action']} within {within:g} s")

    async def ping(self, within: float) -> None:
        """Send a Ping and wait for its answer while the PBX keeps sending.

        Raises TimeoutError only after `within` seconds in which nothing at all was
        read, and AmiConnectionLost when the connection goes first. A reader behind its
        PBX (a burst, a busy process) reads the Pong after the events sent before it,
        seconds late; the session is alive all the same, and dropping it would lose the
        calls in progress (bench/fleet.py at 100,000 events/s lost 98-367 of 22,600)."""
        if self.lost.done():
            raise AmiConnectionLost("connection closed")
        future = self.protocol.send(self.action({"Action": "Ping"}))
        read = self.protocol.bytes_received
        while True:
            done, _ = await asyncio.wait({future, self.lost}, timeout=within,
                                         return_when=asyncio.FIRST_COMPLETED)
            if future in done:
                return
            if self.lost.done() or self.protocol.bytes_received == read:
                future.cancel()
                if self.lost.done():
                    raise AmiConnectionLost("connection closed while waiting for Ping")
                raise TimeoutError(f"nothing read within {within:g} s of a Ping")
            read = self.protocol.bytes_received

    def dispatch(self, event: Any) -> list[str]:
        self.on_event(event.raw)
        return []

    def malformed(self, count: int) -> None:
        self.on_malformed(count)

    def connection_lost(self, exc: Any) -> None:
        self._connected = False
        self.awaiting_actions.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if getattr(self, "protocol", None) is not None:
            self.protocol.close()
        if not self.lost.done():
            self.lost.set_result(None)


class AmiConnection:
    """Keeps one PBX's AMI session alive and hands its events to `on_event`.

    `on_resync` gets the CoreShowChannel events after every login, before any
    later event is read; `on_resync_start` runs just before CoreShowChannels is
    asked, so the receiver can tell events newer than the snapshot (they may be
    dispatched before the reply is). `on_inventory`, when given, gets what the PBX says
    about its devices and queue members (`discovery.discover`) after every login, after
    `on_resync_start` and before CoreShowChannels, so that the live channels are read
    with the devices known. Handlers run synchronously in the reader, in order;
    `on_resync` may return an awaitable (to hand over a large result in slices), which is
    awaited before the session counts as up.

    `event_filter` (settable while connected) names the events worth parsing; the
    others are skipped (see `MessageSplitter`). None: every event. `on_read` runs after
    each TCP read's events are handled, with the number of events it skipped.
    """

    def __init__(self, pbx: PbxConfig, on_event: EventHandler, *,
                 on_resync: ResyncHandler | None = None,
                 on_resync_start: Callable[[], None] | None = None,
                 on_inventory: Callable[[Inventory], None] | None = None,
                 on_malformed: Callable[[int], None] | None = None,
                 on_state: Callable[[bool], None] | None = None,
                 on_read: Callable[[int], None] = lambda skipped: None,
                 event_filter: EventFilter | None = None,
                 ping_interval: float = 20.0, ping_timeout: float | None = None,
                 backoff_base: float = 0.5, backoff_max: float = 30.0,
                 request_timeout: float = 10.0, stable_after: float = 2.0,
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        if not pbx.username or pbx.secret is None:
            raise ValueError(f"pbx[{pbx.name}]: username and secret are needed to connect")
        self.pbx = pbx
        self.on_event = on_event
        self.on_resync = on_resync
        self.on_resync_start = on_resync_start
        self.on_inventory = on_inventory
        self.on_malformed = on_malformed
        self.on_state = on_state
        self.on_read = on_read
        self._event_filter = event_filter
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout if ping_timeout is not None else min(10.0,
                                                                               ping_interval)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self.stable_after = stable_after
        self._synced_at: float | None = None
        self.rng = rng or random.Random()
        self._sleep = sleep
        self.raw_listeners: list[RawListener] = []
        self.retry_delays: list[float] = []
        self.sessions = 0
        self.failures = 0
        # An outage (PBX down, refused logins) is warned of once per error, repeats at
        # debug; ami.connected says how many tries failed before.
        self.retries = Retries()
        self.version: str | None = None
        self.last_error: str | None = None  # why the last attempt or session ended
        self._manager: AmiManager | None = None
        self._ready = asyncio.Event()
        self._state_changed = asyncio.Event()

    @property
    def connected(self) -> bool:
        """Logged in and resynchronised."""
        return self._ready.is_set()

    @property
    def event_filter(self) -> EventFilter | None:
        return self._event_filter

    @event_filter.setter
    def event_filter(self, wanted: EventFilter | None) -> None:
        """Takes effect at once, also on a live session (from its next read)."""
        self._event_filter = wanted
        manager = self._manager
        if manager is not None:
            manager.event_filter = wanted
            splitter = getattr(getattr(manager, "protocol", None), "splitter", None)
            if splitter is not None:
                splitter.wanted = wanted

    def add_raw_listener(self, fn: RawListener) -> None:
        """Every TCP read as received (tests use it to prove a read split a character)."""
        self.raw_listeners.append(fn)

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    async def wait_sessions(self, count: int, within: float) -> None:
        """Until `count` sessions have been established in total (reconnect tests)."""
        async def _wait() -> None:
            while self.sessions < count or not self.connected:
                self._state_changed.clear()
                await self._state_changed.wait()
        async with asyncio.timeout(within):
            await _wait()

    async def wait_failures(self, count: int, within: float) -> None:
        """Until `count` connection or login attempts have failed in total."""
        async def _wait() -> None:
            while self.failures < count:
                self._state_changed.clear()
                await self._state_changed.wait()
        async with asyncio.timeout(within):
            await _wait()

    def drop(self) -> None:
        """Close the current session (it reconnects)."""
        if self._manager is not None:
            self._manager.close()

    async def run(self) -> None:
        """Connect, and reconnect after every failure, until cancelled."""
        attempt = 0
        pbx = self.pbx.name
        while True:
            self._synced_at = None
            news = True
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except AmiAuthError as exc:
                self.last_error = str(exc)
                news = self.retries.failed(f"login: {exc}")
                (log.error if news else log.debug)(
                    "ami.login_failed", pbx=pbx, host=self.pbx.host, port=self.pbx.port,
                    username=self.pbx.username, error=str(exc), tries=self.retries.tries,
                    hint=exc.hint)
            except (OSError, TimeoutError, AmiError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                news = self.retries.failed(f"{type(exc).__name__}: {self.last_error}")
                hint = exc.hint if isinstance(exc, AmiError) else None
                # A setting of the admin's (a hint) is an error; an outage a warning.
                (log.debug if not news else log.error if hint else log.warning)(
                    "ami.connection_failed", pbx=pbx, host=self.pbx.host, port=self.pbx.port,
                    error=self.last_error, tries=self.retries.tries,
                    **({"hint": hint} if hint else {}))
            except Exception as exc:
                self.last_error = type(exc).__name__
                news = self.retries.failed(f"session: {self.last_error}")
                if news:
                    log.exception("ami.session_error", pbx=pbx)
                else:
                    log.debug("ami.session_error", pbx=pbx, error=self.last_error,
                              tries=self.retries.tries)
            # A session ends by an exception as a rule (the peer went away), so whether it
            # was a good one is read from when it synced, not from a return value.
            if self._synced_at is None:
                self.failures += 1
                self._notify()
            elif time.monotonic() - self._synced_at >= self.stable_after:
                attempt = 0  # logged in and lasted: retry from the base, at once
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, self.rng)
            attempt += 1
            self.retry_delays.append(delay)
            (log.info if news else log.debug)("ami.reconnect_scheduled", pbx=pbx,
                                              retry_in=round(delay, 3))
            await self._sleep(delay)

    async def _session(self) -> None:
        """One connection, from TCP connect to its end; `_synced_at` says when it synced."""
        loop = asyncio.get_running_loop()
        manager = AmiManager(loop, self.pbx, self.on_event, self._malformed, self.raw_listeners,
                             self._event_filter, self.on_read)
        self._manager = manager
        synced = False
        try:
            assert self.pbx.username is not None and self.pbx.secret is not None
            await manager.open(self.pbx.username, self.pbx.secret, self.request_timeout)
            self.version = manager.protocol.version
            if self.on_resync_start is not None:
                self.on_resync_start()
            if self.on_inventory is not None:
                await self._discover(manager)
            channels = await self._resync(manager)
            if self.on_resync is not None:
                handed = self.on_resync(channels)
                if inspect.isawaitable(handed):
                    await handed
            synced = True
            self._synced_at = time.monotonic()
            self.sessions += 1
            self._ready.set()
            self._notify()
            if self.on_state is not None:
                self.on_state(True)
            log.info("ami.connected", pbx=self.pbx.name, host=self.pbx.host,
                     port=self.pbx.port, version=self.version, live_channels=len(channels),
                     failed_tries=self.retries.succeeded())
            await self._keepalive(manager)
        finally:
            manager.close()
            self._manager = None
            if synced:
                self._ready.clear()
                self._notify()
                if self.on_state is not None:
                    self.on_state(False)

    async def _discover(self, manager: AmiManager) -> None:
        """Devices and queue members; a PBX too slow to tell is no reason to drop the link."""
        assert self.on_inventory is not None
        try:
            inventory = await discover(manager.request, self.request_timeout, self.pbx.name)
        except TimeoutError as exc:
            log.warning("ami.discovery_timed_out", pbx=self.pbx.name, error=str(exc))
            return
        self.on_inventory(inventory)

    async def _resync(self, manager: AmiManager) -> list[AmiMessage]:
        """The CoreShowChannel events of every live channel."""
        response = await manager.request({"Action": "CoreShowChannels"},
                                         self.request_timeout)
        if not isinstance(response, list):
            raise AmiRefused("CoreShowChannels", response.get("Message", ""), hint=(
                "give callhub's AMI user `write = reporting` in manager.conf (as "
                "deploy/asterisk/manager.conf does), then run `manager reload`: callhub "
                "asks CoreShowChannels after every login for the calls in progress"))
        return [m.raw for m in response if m.get("Event") == "CoreShowChannel"]

    async def _keepalive(self, manager: AmiManager) -> None:
        """Ping every ping_interval; return (raise) when the link dies."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ping_interval):
                    await asyncio.shield(manager.lost)
            if manager.lost.done():
                raise AmiConnectionLost("connection closed by peer")
            sent = time.monotonic()
            try:
                await manager.ping(self.ping_timeout)
            except TimeoutError:
                raise AmiConnectionLost(
                    f"no answer to Ping and nothing read within {self.ping_timeout:g} s"
                ) from None
            log.debug("ami.pong", pbx=self.pbx.name, rtt=round(time.monotonic() - sent, 4))

    def _malformed(self, count: int) -> None:
        log.warning("ami.malformed_message", pbx=self.pbx.name, count=count)
        if self.on_malformed is not None:
            self.on_malformed(count)

    def _notify(self) -> None:
        self._state_changed.set()
