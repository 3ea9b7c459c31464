"""Asterisk's side of one FastAGI session, as the shipped dialplan plays it.

For an inbound call Asterisk runs `AGI(agi://callhub/route)` (the dialplan in
deploy/asterisk/extensions.conf): it opens a FastAGI connection, sends the
AGI environment exactly as res_agi.c writes it, answers every command with
`200 result=...`, and the dialplan then reads the `CALLHUB_*` variables (set by
`EXEC MSet` or `SET VARIABLE`, read as Asterisk parses them: agi_parse.py). If
callhub does not answer (connection refused, timeout) the dialplan sees
`AGISTATUS=FAILURE` and dials its own default. `routed_calls.py` turns the
answer into a ringing call; tests and the routing benchmark use the
conversation alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from callhub.sim.agi_parse import agi_variables

AGI_TIMEOUT = 2.0


def asterisk_environment(*, did: str, caller: str, caller_name: str = "",
                         channel: str = "PJSIP/trunk-00000001", uniqueid: str = "0.0",
                         host: str = "127.0.0.1", port: int = 4573, script: str = "route",
                         context: str = "from-pstn", priority: int = 3,
                         version: str = "22.10.1", args: Iterable[str] = ()
                         ) -> list[tuple[str, str]]:
    """The `agi_*` variables in the order Asterisk 22 sends them for AGI(agi://...)."""
    env = [
        ("agi_network", "yes"),
        ("agi_network_script", script),
        ("agi_request", f"agi://{host}:{port}/{script}"),
        ("agi_channel", channel),
        ("agi_language", "en"),
        ("agi_type", channel.split("/", 1)[0]),
        ("agi_uniqueid", uniqueid),
        ("agi_version", version),
        ("agi_callerid", caller or "unknown"),
        ("agi_calleridname", caller_name or "unknown"),
        ("agi_callingpres", "0"),
        ("agi_callingani2", "0"),
        ("agi_callington", "0"),
        ("agi_callingtns", "0"),
        ("agi_dnid", did),
        ("agi_rdnis", "unknown"),
        ("agi_context", context),
        ("agi_extension", did),
        ("agi_priority", str(priority)),
        ("agi_enhanced", "0.0"),
        ("agi_accountcode", ""),
        ("agi_threadid", "140245187446464"),
    ]
    env += [(f"agi_arg_{i}", a) for i, a in enumerate(args, 1)]
    return env


@dataclass(slots=True)
class AgiAnswer:
    """What the dialplan would have after the AGI() step."""

    status: str  # AGISTATUS: SUCCESS, or FAILURE when nobody answered the connection
    variables: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def answered(self) -> bool:
        """The dialplan's test: AGI succeeded and set CALLHUB_ROUTE_RESULT."""
        return self.status == "SUCCESS" and bool(self.variables.get("CALLHUB_ROUTE_RESULT"))

    @property
    def targets(self) -> list[str]:
        raw = self.variables.get("CALLHUB_TARGETS", "")
        return [t for t in raw.split("&") if t]

    @property
    def ring_timeout(self) -> int | None:
        """The line's default (CALLHUB_RING_TIMEOUT): the fallback's ring time."""
        try:
            return int(self.variables.get("CALLHUB_RING_TIMEOUT", ""))
        except ValueError:
            return None

    def ring_timeouts(self, default: int) -> list[int]:
        """Seconds each target rings, as the dialplan reads them: the i-th of
        CALLHUB_RING_TIMEOUTS, else CALLHUB_RING_TIMEOUT, else `default`."""
        given = self.variables.get("CALLHUB_RING_TIMEOUTS", "").split("&")
        fallback = self.ring_timeout or default
        out = []
        for i in range(len(self.targets)):
            text = given[i] if i < len(given) else ""
            out.append(int(text) if text.isdigit() and int(text) > 0 else fallback)
        return out

    @property
    def fallback(self) -> str | None:
        return self.variables.get("CALLHUB_FALLBACK") or None


async def agi_request(host: str, port: int, env: Iterable[tuple[str, str]],
                      within: float = AGI_TIMEOUT) -> AgiAnswer:
    """Play Asterisk's side of one FastAGI session; FAILURE if the server is not there."""
    started = time.perf_counter()
    answer = AgiAnswer(status="FAILURE")
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write("".join(f"{k}: {v}\n" for k, v in env).encode("utf-8") + b"\n")
                await writer.drain()
                while raw := await reader.readline():
                    command = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    answer.commands.append(command)
                    answer.variables.update(agi_variables(command))
                    writer.write(b"200 result=1\n" if command.startswith("SET ")
                                 else b"200 result=0\n")
                    await writer.drain()
                answer.status = "SUCCESS"
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        answer.status = "FAILURE"
    answer.seconds = time.perf_counter() - started
    return answer
