"""The demo's rota: every agent on every line, all day, in memory.

`callhub run --demo` routes the simulator's lines by it, so FastAGI answers as
in production without touching the real rota on disk; the routing benchmark
and tests use it as a ready-made rota.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import time

from callhub.config import Settings
from callhub.routing.model import Agent, Line, Rota, Shift


def demo_rota(agents: Mapping[str, str], lines: Mapping[str, Iterable[str]],
              fallback: str | None = None, ring_timeout: int = 15) -> Rota:
    """A round-the-clock rota: every agent (interface -> name) on every line (name -> DIDs).

    `callhub run --demo` loads it for the simulator's lines so FastAGI answers
    as in production. Agent ids are the interface's last part (`PJSIP/1001` ->
    `1001`, `Local/agent1@agentsim` -> `agent1`).
    """
    ids: dict[str, str] = {}
    for iface in agents:
        short = iface.split("/", 1)[-1].split("@", 1)[0] or iface
        ids[iface] = short if short not in ids.values() else iface
    agent_table = {ids[iface]: Agent(id=ids[iface], name=name, interface=iface)
                   for iface, name in agents.items()}
    rotation = tuple(agent_table)
    everyday = frozenset(range(7))
    line_table = {
        name: Line(name=name, dids=tuple(dids), rotation=rotation,
                   shifts=(Shift("all day", everyday, time(0, 0), time(0, 0), rotation,
                                 ends_at_midnight=True),),
                   ring_timeout=ring_timeout, fallback=fallback)
        for name, dids in lines.items()
    }
    return Rota(agents=agent_table, lines=line_table, fallback=fallback, source="demo")


def demo_rota_for(settings: Settings, dids: Iterable[str] = (),
                  fallback: str | None = None) -> Rota:
    """The demo rota for the configured PBXs: their agents on their lines, plus each of
    `dids` (the simulator's) that no configured line has, as a line of its own."""
    agents: dict[str, str] = {}
    lines: dict[str, list[str]] = {}
    for pbx in settings.pbxs:
        agents.update(pbx.agents)
        for did, line in pbx.lines.items():
            lines.setdefault(line, []).append(did)
    known = {d for group in lines.values() for d in group}
    for did in dids:
        if did not in known:
            lines.setdefault(did, []).append(did)
    return demo_rota(agents, lines, fallback=fallback)
