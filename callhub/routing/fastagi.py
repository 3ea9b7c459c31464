"""The FastAGI server that answers the dialplan's `AGI(agi://HOST:4573/route)`.

Written on asyncio streams rather than panoramisk's `fast_agi`: that handler
loops forever when a client closes before the blank line that ends the AGI
environment, has no read timeout and calls `asyncio.get_event_loop()`; here
every read has a deadline and every path ends in an answer.

One request: read the `agi_*` environment up to the blank line, choose
(synchronously, well under a millisecond), then send one `SET VARIABLE` per
result and read each `200 result=1`. Variables (dialplan in
deploy/asterisk/extensions.conf):

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
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import structlog

from callhub.config import Settings
from callhub.logs import mask_number
from callhub.routing.chooser import Decision, Router
from callhub.routing.metrics import RoutingMetrics

log = structlog.get_logger(__name__)

SCRIPT = "route"
SEPARATOR = "&"
HEADER_TIMEOUT = 2.0
REPLY_TIMEOUT = 2.0
# The whole answer (every SET VARIABLE and its reply) within this: a client that keeps
# sending `100 Trying` or garbage cannot hold a handler (and its socket) for ever.
ANSWER_DEADLINE = 5.0
MAX_ENV_BYTES = 16 * 1024
MAX_ENV_LINES = 200
BACKLOG = 1024  # a burst of calls must queue, not be refused (the dialplan would fall back)


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


async def read_environment(reader: asyncio.StreamReader) -> AgiEnvironment:
    """Read `key: value` lines up to the blank line; raise MalformedRequest on anything else."""
    values: dict[str, str] = {}
    size = 0
    while True:
        raw = await reader.readline()
        if not raw:
            raise MalformedRequest("connection closed before the end of the AGI environment")
        if not raw.endswith(b"\n"):
            raise MalformedRequest("AGI environment line too long")
        size += len(raw)
        if size > MAX_ENV_BYTES or len(values) > MAX_ENV_LINES:
            raise MalformedRequest("AGI environment too large")
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            break
        key, sep, value = line.partition(":")
        if not sep or not key.startswith("agi_"):
            raise MalformedRequest(f"not an AGI variable line: {line[:60]!r}")
        values[key.strip()] = value.strip()
    if not values:
        raise MalformedRequest("empty AGI environment")
    return AgiEnvironment(values)


def quote(value: str) -> str:
    """An AGI argument in double quotes (backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def decision_variables(decision: Decision) -> list[tuple[str, str]]:
    """The channel variables for a decision, in the order they are sent (result last)."""
    targets = decision.interfaces
    return [
        ("CALLHUB_TARGETS", SEPARATOR.join(targets)),
        ("CALLHUB_TARGET_COUNT", str(len(targets))),
        ("CALLHUB_TARGET", targets[0] if targets else ""),
        ("CALLHUB_RING_TIMEOUT", str(decision.ring_timeout)),
        ("CALLHUB_RING_TIMEOUTS", SEPARATOR.join(str(s) for s in decision.target_timeouts)),
        ("CALLHUB_FALLBACK", decision.fallback or ""),
        ("CALLHUB_LINE", decision.line or ""),
        ("CALLHUB_ROUTE_RESULT", decision.result),
    ]


class AgiHangup(ConnectionError):
    """Asterisk says the channel is gone; stop sending."""


async def send_command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       command: str) -> str:
    """Send one AGI command and return its `200 ...` reply line."""
    writer.write(command.encode("utf-8") + b"\n")
    await writer.drain()
    while True:
        try:
            raw = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
        except ValueError:  # a reply line over the stream limit: dropped, not fatal
            continue
        if not raw:
            raise AgiHangup("connection closed by Asterisk")
        reply = raw.decode("utf-8", errors="replace").strip()
        if not reply:  # no reply is blank: the rest of a malformed request, skipped
            continue
        if reply.startswith("100"):  # "100 result=0 Trying..." then the real reply
            continue
        if reply == "HANGUP" or reply.startswith("511"):
            raise AgiHangup(reply)
        if reply.startswith("520"):  # usage error: the text runs to "520 End of proper usage."
            while raw and not raw.startswith(b"520 "):
                with contextlib.suppress(ValueError):
                    raw = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
        return reply


class FastAgiHandler:
    """Answers FastAGI connections with the router's decision; never leaves a call hanging."""

    def __init__(self, router: Router, metrics: RoutingMetrics | None = None,
                 answer_deadline: float = ANSWER_DEADLINE) -> None:
        self.router = router
        self.metrics = metrics
        self.answer_deadline = answer_deadline
        self.requests = 0

    async def __call__(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            env = await asyncio.wait_for(read_environment(reader), HEADER_TIMEOUT)
        except (MalformedRequest, TimeoutError, ConnectionError, ValueError) as exc:
            started = time.perf_counter()
            decision = replace(self.router.error_decision(None), result="malformed")
            log.warning("fastagi.malformed_request", answer="fallback",
                        error=str(exc) or type(exc).__name__)
            if not reader.at_eof():
                await self._reply(reader, writer, decision, {})
            self._observe(decision, started)
            return
        started = time.perf_counter()
        context: dict[str, str | None] = {
            "channel": env.get("agi_channel"), "uniqueid": env.get("agi_uniqueid"),
            "caller": mask_number(env.get("agi_callerid")),
        }
        key = None
        try:
            if env.script != SCRIPT:
                raise MalformedRequest(f"unknown AGI script {env.script!r} (expected "
                                       f"{SCRIPT!r})")
            keys = env.line_keys()
            rota = self.router.rota
            key = next((k for k in keys if rota.line_for(k) is not None),
                       keys[0] if keys else None)
            decision = await self.router.choose_shared(key)
        except MalformedRequest as exc:
            decision = replace(self.router.error_decision(key), result="malformed")
            log.warning("fastagi.malformed_request", answer="fallback",
                        error=str(exc), **context)
        except Exception:
            decision = self.router.error_decision(key)
            log.exception("fastagi.routing_failed", answer="fallback",
                          line=decision.line, **context)
        await self._reply(reader, writer, decision, context)
        seconds = self._observe(decision, started)
        log.info("fastagi.routed", line=decision.line, result=decision.result,
                 targets=len(decision.targets), ms=round(seconds * 1000, 2), **context)

    async def _reply(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     decision: Decision, context: Mapping[str, str | None]) -> None:
        try:
            async with asyncio.timeout(self.answer_deadline):
                for name, value in decision_variables(decision):
                    await send_command(reader, writer, f"SET VARIABLE {name} {quote(value)}")
        except (AgiHangup, TimeoutError, ConnectionError) as exc:
            log.warning("fastagi.channel_gone", hint="before the answer was complete",
                        error=str(exc) or type(exc).__name__, **context)

    def _observe(self, decision: Decision, started: float) -> float:
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe(decision, seconds)
        return seconds


async def start_fastagi(settings: Settings, router: Router,
                        metrics: RoutingMetrics | None = None,
                        host: str | None = None, port: int | None = None,
                        answer_deadline: float = ANSWER_DEADLINE) -> asyncio.Server:
    """Listen on settings.fastagi_listen (or host/port; port 0 picks a free one)."""
    listen_host = settings.fastagi_listen[0] if host is None else host
    listen_port = settings.fastagi_listen[1] if port is None else port
    handler = FastAgiHandler(router, metrics, answer_deadline)
    server = await asyncio.start_server(handler, listen_host, listen_port,
                                        limit=MAX_ENV_BYTES, backlog=BACKLOG)
    sockname = server.sockets[0].getsockname() if server.sockets else None
    log.info("fastagi.listening", address=f"{sockname[0]}:{sockname[1]}" if sockname else "")
    return server
