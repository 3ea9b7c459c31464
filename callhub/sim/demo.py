"""`callhub run --demo`: the AMI simulator as the PBX, and the parts that make it a demo.

`Demo.before` and `Demo.after` are daemon parts (`callhub.daemon.serve(d,
before=..., after=...)`): before the production parts, the simulator starts
with a steady mix of realistic calls and becomes the only PBX, an admin
token is generated when none is configured, and routing gets the demo rota;
after them, the admin token is printed beside the API URL and an agent calls
back the oldest pending caller now and then, so the worklist moves.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from email.utils import parseaddr

import structlog
from sqlalchemy.exc import SQLAlchemyError

from callhub.config import ApiToken, settings_from_mapping
from callhub.daemon import Daemon, Part
from callhub.lifecycle import Policy
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.demo_rota import demo_rota_for
from callhub.sim.mix import DEMO_DIDS, DEMO_ENDPOINTS, MixSettings
from callhub.sim.templates import template_for
from callhub.store import queries

log = structlog.get_logger(__name__)

DEMO_LINES = dict(zip(DEMO_DIDS, ("hotline", "repairs", "complaints", "front-desk"),
                      strict=True))
DEMO_CALLBACK_SECONDS = 20.0
CALLBACK_AGENT = "Local/agent2@agentsim"


def sip_phone_agents() -> dict[str, str]:
    """The simulator's SIP phones as agents (`PJSIP/1001` -> `Li Na`), beside the trace
    template's Local ones: the calls they answer are then counted under their own
    `agent` label and on the desk by name, not as `other` (metrics label only the
    devices of `[pbx.agents]`)."""
    return {f"PJSIP/{endpoint}": name for endpoint, caller_id in DEMO_ENDPOINTS.items()
            if (name := parseaddr(caller_id)[0])}


@dataclass
class Demo:
    """One demo run: `rate` calls a minute on a clock `speed` times faster than real."""

    rate: float = 12.0
    speed: float = 1.0
    simulator: AmiSimulator | None = None

    @property
    def before(self) -> tuple[Part, ...]:
        """Parts to start before the production ones."""
        return (self.simulated_pbx,)

    @property
    def after(self) -> tuple[Part, ...]:
        """Parts to start after the production ones."""
        return (self.announce, self.callbacks)

    @asynccontextmanager
    async def simulated_pbx(self, d: Daemon) -> AsyncIterator[None]:
        """The AMI simulator as the only PBX, a steady call mix, a generated admin token,
        the demo rota."""
        secret = secrets.token_urlsafe(12)
        sim = AmiSimulator("127.0.0.1", 0, username="callhub", secret=secret)
        sim.endpoints = dict(DEMO_ENDPOINTS)  # callhub names the SIP phones from them
        port = await sim.start()
        config = {k: v for k, v in template_for("answered").config.items() if k != "pbx"}
        config.update(name="demo", host="127.0.0.1", port=port, username="callhub",
                      secret=secret, lines=DEMO_LINES,
                      agents={**config.get("agents", {}), **sip_phone_agents()})
        demo_pbx = settings_from_mapping({"pbx": [config]}).pbxs[0]
        tokens = d.settings.api_tokens
        if not any(t.role == "admin" for t in tokens):  # the demo prints one to try
            tokens = (*tokens, ApiToken("admin", secrets.token_urlsafe(18)))
        d.settings = replace(d.settings, pbxs=(demo_pbx,), api_tokens=tokens)
        d.demo = True
        d.rota = demo_rota_for(d.settings)
        self.simulator = sim
        # Real time by default (calls carry real times); talks shortened so the first
        # minute already shows answered, missed and abandoned calls.
        mix_settings = MixSettings(rate_per_minute=self.rate, talk_range=(4.0, 25.0))
        log.info("demo.simulator", port=port, calls_per_minute=self.rate, speed=self.speed)
        try:
            # The demo's PBX traffic: without it the demo shows nothing, so its death stops it.
            async with d.supervisor.task("demo-mix", lambda: sim.run_mix(
                    self.rate, speed=self.speed, settings=mix_settings),
                    policy=Policy.STOP, required=False):
                yield
        finally:
            await sim.stop()

    @asynccontextmanager
    async def announce(self, d: Daemon) -> AsyncIterator[None]:
        """Print the admin token and a first request to try, under the API's URL."""
        admin = next(t.token for t in d.settings.api_tokens if t.role == "admin")
        print(f"demo admin token: {admin}\n"
              f"try: curl -H 'Authorization: Bearer {admin}' {d.api_url}/api/v1/calls",
              file=d.out, flush=True)
        yield

    @asynccontextmanager
    async def callbacks(self, d: Daemon) -> AsyncIterator[None]:
        """An agent calls back the oldest pending caller now and then (how=callback)."""
        if self.simulator is None or d.db is None:
            yield
            return
        sim, db = self.simulator, d.db
        every = DEMO_CALLBACK_SECONDS / max(self.speed, 0.1)

        async def call_back() -> None:
            while True:
                await asyncio.sleep(every)  # pacing of the demo, not synchronisation
                try:
                    async with db.connection() as conn:
                        oldest = await queries.list_worklist(
                            conn, queries.WorklistFilter(status="pending"), 1)
                except (OSError, SQLAlchemyError) as exc:  # the database is away: next round
                    log.debug("demo.callback_skipped", error=type(exc).__name__)
                    continue
                if not oldest:
                    continue
                now = max(sim.clock(), sim.stream_now)  # the mix may run ahead (--demo-speed)
                call = sim.factory.make("outbound", now, number=oldest[0]["number"],
                                        agent=CALLBACK_AGENT, ring_seconds=4.0,
                                        talk_seconds=8.0)
                await sim.send_call(call, speed=self.speed)

        async with d.supervisor.task("demo-callbacks", call_back, required=False):
            yield
