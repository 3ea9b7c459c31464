"""The FastAGI server that answers the dialplan's `AGI(agi://HOST:4573/route)`.

Written on asyncio streams rather than panoramisk's `fast_agi`: that handler
loops forever when a client closes before the blank line that ends the AGI
environment, has no read timeout and calls `asyncio.get_event_loop()`; here
every read has a deadline and every path ends in an answer.

One request: read the `agi_*` environment up to the blank line, choose
(synchronously, well under a millisecond), then set every result in one
`EXEC MSet` (callhub/routing/agi_answer.py says why and how it is escaped) and
read its `200 result=0`. Variables (dialplan in deploy/asterisk/extensions.conf):

- `CALLHUB_TARGETS`: agent interfaces to ring in order, joined by `&`
  (`PJSIP/1001&PJSIP/1003`); `${CUT(CALLHUB_TARGETS,&,i)}` is the i-th.
- `CALLHUB_RING_TIMEOUTS`: seconds each of them rings, in the same order and
  with the same separator (`12&25`); `${CUT(CALLHUB_RING_TIMEOUTS,&,i)}`.
- `CALLHUB_TARGET_COUNT`, `CALLHUB_RING_TIMEOUT` (the line's default: for the
  fallback, and for a dialplan that does not read `CALLHUB_RING_TIMEOUTS`),
  `CALLHUB_FALLBACK` (may be empty), `CALLHUB_TARGET` (the first target),
  `CALLHUB_LINE`, and last `CALLHUB_ROUTE_RESULT` (`routed`,
  `no_agent_on_duty`, `no_agent_available`, `unknown_line`, `error`,
  `malformed`). The dialplan treats a missing `CALLHUB_ROUTE_RESULT` as "callhub
  did not answer" and dials its own fallback.

Any failure (a bug, an unreadable rota, a malformed request) still answers
with the fallback, logs the cause and counts it in
`callhub_route_requests_total{result="error"|"malformed"}`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import cast

import structlog

from callhub.config import Settings
from callhub.logs import mask_number
from callhub.routing.agi_answer import MAX_LINE, fits, mset_commands
from callhub.routing.chooser import Decision, Router
from callhub.routing.metrics import RoutingMetrics

log = structlog.get_logger(__name__)

SCRIPT = "route"
SEPARATOR = "&"
HEADER_TIMEOUT = 2.0
REPLY_TIMEOUT = 2.0
# The whole answer (every command and its reply) within this: a client that keeps
# sending `100 Trying` or garbage cannot hold a handler (and its socket) for ever.
ANSWER_DEADLINE = 5.0
LINGER = 1.0  # after giving up on a client that keeps talking (see AgiSession._gone)
MAX_ENV_BYTES = 16 * 1024
MAX_ENV_LINES = 200
BACKLOG = 1024  # a burst of calls must queue, not be refused (the dialplan would fall back)
# Complete `agi_key: value` lines up to the blank line, the whole of a usual environment:
# read by two regular expressions rather than line by line (~20 us less a call).
_WHOLE_ENV = re.compile(rb"(?:agi_[^:\n]*:[^\n]*\n)+\r*\n")
_ENV_PAIR = re.compile(r"([^:\n]*):([^\n]*)\n")


class MalformedRequest(ValueError):
    """The AGI environment is not `agi_key: value` lines ended by a blank line."""


@dataclass(frozen=True, slots=True)
class AgiEnvironment:
    """The variables Asterisk sends at the start of an AGI session."""

    values: Mapping[str, str]

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    @property
    def script(self) -> str:
        """`route` for agi://host:4573/route (query and arguments stripped)."""
        script = self.get("agi_network_script")
        if not script:
            request = self.get("agi_request")
            script = request.split("://", 1)[-1].partition("/")[2]
        return script.partition("?")[0].strip("/")

    def line_keys(self) -> list[str]:
        """Where the line may come from, best first: an AGI argument, the extension, the DNID."""
        keys = [self.get("agi_arg_1"), self.get("agi_extension"), self.get("agi_dnid")]
        return [k for k in keys if k and k not in ("s", "unknown", "i", "t")]


def decision_variables(decision: Decision) -> list[tuple[str, str]]:
    """The channel variables for a decision, in the order they are sent (result last).

    A target list longer than one AGI line (some 90 agents on duty, with long interface
    names) cannot be set: Asterisk would read its cut-off rest as a command. The list
    keeps the first agents that fit; they ring for many minutes before the last of them.
    """
    targets = list(decision.interfaces)
    timeouts = [str(s) for s in decision.target_timeouts]
    if len(SEPARATOR.join(targets)) * 4 + 64 > MAX_LINE:  # escaped, at most 4 bytes a char
        while len(targets) > 1 and not fits("CALLHUB_TARGETS", SEPARATOR.join(targets)):
            del targets[-1], timeouts[-1]
    return [
        ("CALLHUB_TARGETS", SEPARATOR.join(targets)),
        ("CALLHUB_TARGET_COUNT", str(len(targets))),
        ("CALLHUB_TARGET", targets[0] if targets else ""),
        ("CALLHUB_RING_TIMEOUT", str(decision.ring_timeout)),
        ("CALLHUB_RING_TIMEOUTS", SEPARATOR.join(timeouts)),
        ("CALLHUB_FALLBACK", decision.fallback or ""),
        ("CALLHUB_LINE", decision.line or ""),
        ("CALLHUB_ROUTE_RESULT", decision.result),
    ]


class FastAgiHandler:
    """Answers FastAGI connections with the router's decision; never leaves a call hanging.

    Each connection is an `AgiSession` (an asyncio Protocol, no task of its own): the
    decision is made as soon as the environment is complete (synchronously, or awaited
    when the rotation position is shared through PostgreSQL), then the answer's
    commands go out one per reply that comes in (one, unless the variables are longer
    than an AGI line): Asterisk must not be sent a command before it answered the last.
    """

    def __init__(self, router: Router, metrics: RoutingMetrics | None = None,
                 answer_deadline: float = ANSWER_DEADLINE) -> None:
        self.router = router
        self.metrics = metrics
        self.answer_deadline = answer_deadline
        self.requests = 0

    def session(self) -> AgiSession:
        return AgiSession(self)

    def decide(self, env: AgiEnvironment) -> tuple[Decision | None, str | None]:
        """The decision now, or (None, key) when it must be awaited (shared position)."""
        key = None
        try:
            if env.script != SCRIPT:
                raise MalformedRequest(f"unknown AGI script {env.script!r} (expected "
                                       f"{SCRIPT!r})")
            keys = env.line_keys()
            rota = self.router.rota
            key = next((k for k in keys if rota.line_for(k) is not None),
                       keys[0] if keys else None)
            if self.router.shared is not None:
                return None, key
            return self.router.choose(key), key
        except Exception as exc:
            return self.failed(exc, key, env), key

    def failed(self, exc: BaseException, key: str | None, env: AgiEnvironment) -> Decision:
        if isinstance(exc, MalformedRequest):
            log.warning("fastagi.malformed_request", answer="fallback", error=str(exc),
                        **context_of(env))
            return replace(self.router.error_decision(key), result="malformed")
        decision = self.router.error_decision(key)
        log.error("fastagi.routing_failed", answer="fallback", line=decision.line,
                  exc_info=exc, **context_of(env))
        return decision

    def observe(self, decision: Decision, started: float) -> float:
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe(decision, seconds)
        return seconds


def context_of(env: AgiEnvironment) -> dict[str, str | None]:
    """What an info log may say about the call: no full number."""
    return {"channel": env.get("agi_channel"), "uniqueid": env.get("agi_uniqueid"),
            "caller": mask_number(env.get("agi_callerid"))}


class AgiSession(asyncio.Protocol):
    """One FastAGI connection: read the environment, decide, send the answer, hang up."""

    def __init__(self, handler: FastAgiHandler) -> None:
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.values: dict[str, str] = {}
        self.env_bytes = 0
        self.state = "environment"  # -> deciding -> answering -> done
        self.env: AgiEnvironment | None = None
        self.decision: Decision | None = None
        self.started = 0.0
        self.commands: list[bytes] = []
        self.sent = 0
        self.skipping = False  # inside a reply line over the limit, or a 520 usage text
        self.usage = False
        self.deadline = 0.0
        self.reply_by = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass: no isinstance)
        self.transport = cast(asyncio.Transport, transport)
        self.handler.requests += 1
        self.reply_by = self.loop.time() + HEADER_TIMEOUT
        self.timer = self.loop.call_at(self.reply_by, self._timed_out)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.state == "environment":
            self._read_environment()
        elif self.state == "answering":
            self._read_replies()
        elif self.state == "lingering":  # hung up on: what still comes is dropped
            del self.buffer[:]
        elif len(self.buffer) > MAX_ENV_BYTES:  # deciding: keep what comes, within reason
            del self.buffer[:-MAX_ENV_BYTES]

    def eof_received(self) -> bool:
        if self.state == "environment":
            self._malformed("connection closed before the end of the AGI environment",
                            reply=False)
        elif self.state == "answering":
            self._gone("connection closed by Asterisk")
        elif self.state == "lingering":
            self._close()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == "environment":
            self._malformed("connection closed before the end of the AGI environment",
                            reply=False)
        elif self.state == "answering":
            self._gone(str(exc) if exc else "connection closed by Asterisk")
        self._finish()

    # -- the environment ----------------------------------------------------------------

    def _read_environment(self) -> None:
        """Take every complete line in the buffer, checked one by one: a bad line is
        answered as soon as it arrives."""
        buffer = self.buffer
        whole = _WHOLE_ENV.match(buffer)
        if (whole is not None and self.env_bytes + whole.end() <= MAX_ENV_BYTES
                and len(self.values) + whole.group().count(b"\n") <= MAX_ENV_LINES):
            # as the loop below would read them, at once
            text = buffer[:whole.end()].decode("utf-8", errors="replace")
            self.values.update({k.strip(): v.strip() for k, v in _ENV_PAIR.findall(text)})
            self.env_bytes += whole.end()
            del buffer[:whole.end()]
            self._environment_complete()
            return
        last = buffer.rfind(b"\n")
        if last < 0:
            if len(buffer) > MAX_ENV_BYTES:
                del buffer[:]
                self._malformed("AGI environment line too long", reply=True)
            return
        values = self.values
        consumed = 0
        try:
            for raw in bytes(buffer[:last]).split(b"\n"):
                consumed += len(raw) + 1
                self.env_bytes += len(raw) + 1
                if self.env_bytes > MAX_ENV_BYTES or len(values) > MAX_ENV_LINES:
                    raise MalformedRequest("AGI environment too large")
                line = raw.decode("utf-8", errors="replace").rstrip("\r")
                if not line:
                    del buffer[:consumed]
                    if not values:
                        raise MalformedRequest("empty AGI environment")
                    self._environment_complete()
                    return
                key, sep, value = line.partition(":")
                if not sep or not key.startswith("agi_"):
                    raise MalformedRequest(f"not an AGI variable line: {line[:60]!r}")
                values[key.strip()] = value.strip()
        except MalformedRequest as exc:
            del buffer[:consumed]
            self._malformed(str(exc), reply=True)
            return
        del buffer[:last + 1]
        if len(buffer) > MAX_ENV_BYTES:
            del buffer[:]
            self._malformed("AGI environment line too long", reply=True)

    def _malformed(self, error: str, *, reply: bool) -> None:
        handler = self.handler
        self.started = time.perf_counter()
        decision = replace(handler.router.error_decision(None), result="malformed")
        log.warning("fastagi.malformed_request", answer="fallback", error=error)
        if reply and self.transport is not None and not self.transport.is_closing():
            self._answer(decision)
        else:
            self.state = "done"
            handler.observe(decision, self.started)
            self._close()

    def _environment_complete(self) -> None:
        self.started = time.perf_counter()
        self.env = env = AgiEnvironment(self.values)
        self.state = "deciding"
        decision, key = self.handler.decide(env)
        if decision is not None:
            self._answer(decision)
            return
        task = self.loop.create_task(self.handler.router.choose_shared(key))
        task.add_done_callback(lambda t: self._decided(t, key))

    def _decided(self, task: asyncio.Task[Decision], key: str | None) -> None:
        assert self.env is not None
        if task.cancelled():
            decision = self.handler.router.error_decision(key)
        elif (exc := task.exception()) is not None:
            decision = self.handler.failed(exc, key, self.env)
        else:
            decision = task.result()
        if self.closed:  # Asterisk went away meanwhile (the position has moved)
            self.state = "done"
            self.handler.observe(decision, self.started)
            return
        self._answer(decision)

    # -- the answer -----------------------------------------------------------------------

    def _answer(self, decision: Decision) -> None:
        self.decision = decision
        self.commands = mset_commands(decision_variables(decision))
        self.state = "answering"
        self.deadline = self.loop.time() + self.handler.answer_deadline
        self._send()
        if self.timer is None or self.timer.when() > self.reply_by:  # else it is re-armed
            if self.timer is not None:                              # when it fires early
                self.timer.cancel()
            self.timer = self.loop.call_at(self.reply_by, self._timed_out)
        if self.buffer:
            self._read_replies()

    def _send(self) -> None:
        assert self.transport is not None
        self.transport.write(self.commands[self.sent])
        self.sent += 1
        self.reply_by = min(self.loop.time() + REPLY_TIMEOUT, self.deadline)

    def _read_replies(self) -> None:
        buffer = self.buffer
        start = 0
        while self.state == "answering":
            end = buffer.find(b"\n", start)
            if end < 0:
                if len(buffer) - start > MAX_ENV_BYTES:  # a reply line over the limit:
                    self.skipping = True                # dropped, not fatal
                    start = len(buffer)
                break
            raw = bytes(buffer[start:end + 1])
            start = end + 1
            if self.skipping:  # the rest of an over-long line
                self.skipping = False
                continue
            reply = raw.decode("utf-8", errors="replace").strip()
            if self.usage:  # "520-..." usage text runs to "520 End of proper usage."
                self.usage = not raw.startswith(b"520 ")
                if not self.usage:
                    self._replied()
                continue
            if not reply or reply.startswith("100"):  # the rest of a malformed request;
                continue                              # "100 Trying..." before the reply
            if reply == "HANGUP" or reply.startswith("511"):
                self._gone(reply)
                break
            if reply.startswith("520-"):
                self.usage = True
                continue
            self._replied()
        del buffer[:start]

    def _replied(self) -> None:
        if self.sent < len(self.commands):
            self._send()
            return
        self.state = "done"
        assert self.decision is not None
        seconds = self.handler.observe(self.decision, self.started)
        context = context_of(self.env) if self.env is not None else {}
        log.info("fastagi.routed", line=self.decision.line, result=self.decision.result,
                 targets=len(self.decision.targets), ms=round(seconds * 1000, 2), **context)
        self._close()

    def _gone(self, error: str, linger: bool = False) -> None:
        """Asterisk hung up (or went silent) before the answer was complete. `linger`: a
        client still talking gets our FIN first and its last lines are read and dropped
        for up to LINGER seconds, so it sees the end of the stream and not a reset."""
        context = context_of(self.env) if self.env is not None else {}
        log.warning("fastagi.channel_gone", hint="before the answer was complete",
                    error=error, **context)
        if self.decision is not None:
            self.handler.observe(self.decision, self.started)
        transport = self.transport
        if linger and transport is not None and transport.can_write_eof():
            self.state = "lingering"
            transport.write_eof()
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_later(LINGER, self._timed_out)
            return
        self.state = "done"
        self._close()

    # -- time limits and the end ----------------------------------------------------------

    def _timed_out(self) -> None:
        self.timer = None
        if self.state == "done":
            return
        now = self.loop.time()
        if self.state == "answering" and now < self.reply_by:
            self.timer = self.loop.call_at(self.reply_by, self._timed_out)  # replies came
            return
        if self.state == "environment":
            self._malformed("TimeoutError", reply=True)
        elif self.state == "answering":
            self._gone("TimeoutError", linger=True)
        elif self.state == "lingering":
            self._close()
        else:  # deciding: the router awaits the database with its own, shorter timeout
            self.timer = self.loop.call_at(now + REPLY_TIMEOUT, self._timed_out)

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._finish()

    def _finish(self) -> None:
        self.closed = True
        if self.state != "deciding":  # a decision still on its way is observed when made
            self.state = "done"
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def start_fastagi(settings: Settings, router: Router,
                        metrics: RoutingMetrics | None = None,
                        host: str | None = None, port: int | None = None,
                        answer_deadline: float = ANSWER_DEADLINE) -> asyncio.Server:
    """Listen on settings.fastagi_listen (or host/port; port 0 picks a free one)."""
    listen_host = settings.fastagi_listen[0] if host is None else host
    listen_port = settings.fastagi_listen[1] if port is None else port
    handler = FastAgiHandler(router, metrics, answer_deadline)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(handler.session, listen_host, listen_port,
                                      backlog=BACKLOG)
    sockname = server.sockets[0].getsockname() if server.sockets else None
    log.info("fastagi.listening", address=f"{sockname[0]}:{sockname[1]}" if sockname else "")
    return server
