"""`callhub run --demo`'s PBX: the agents it configures for the simulator's phones."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

from callhub.config import Settings
from callhub.daemon import Daemon
from callhub.metrics.collectors import CallhubMetrics
from callhub.sim.demo import Demo


async def test_the_demo_counts_its_sip_phones_as_agents_by_the_names_they_announce(
        tmp_path: Path) -> None:
    """The simulator's SIP phones answer demo calls; metrics label only `[pbx.agents]`
    devices, so without them there every call they answered counted as agent="other".
    Each phone the simulator lists is a configured agent, named as its caller ID names
    it, and on the demo rota."""
    settings = replace(Settings(), api_listen=("127.0.0.1", 0), spool_dir=str(tmp_path))
    d = Daemon(settings, out=io.StringIO())
    demo = Demo(rate=0.1)
    async with demo.simulated_pbx(d):
        assert demo.simulator is not None
        pbx = d.settings.pbxs[0]
        phones = {f"PJSIP/{e}": caller_id for e, caller_id in demo.simulator.endpoints.items()
                  if caller_id}
        assert phones, "the simulator lists SIP phones"
        metrics = CallhubMetrics.from_settings(d.settings)
        for interface, caller_id in phones.items():
            assert interface in pbx.agents and pbx.agents[interface] in caller_id
            assert metrics.agent_label(interface) == interface
            assert d.rota is not None
            assert interface in {a.interface for a in d.rota.agents.values()}
        # the trace template's Local agents stay
        assert any(i.startswith("Local/") for i in pbx.agents)
