"""Wiring: a Router from settings (state directory, seed rota file), and the demo rota."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import time

from callhub.config import Settings
from callhub.routing.chooser import Router
from callhub.routing.model import Agent, Line, Rota, Shift
from callhub.routing.state import POSITION_FILE, RotaStore, RotationState, state_dir


def router_from_settings(settings: Settings,
                         busy: Callable[[], Iterable[str]] | None = None,
                         env: dict[str, str] | None = None) -> Router:
    """The production router: rota and rotation position in the routing state directory."""
    directory = state_dir(settings, env)
    store = RotaStore(directory, seed_file=settings.rota_file)
    return Router(store, RotationState(directory / POSITION_FILE), busy=busy,
                  default_timezone=settings.timezone)


def demo_rota(agents: Mapping[str, str], lines: Mapping[str, Iterable[str]],
              fallback: str | None = None, ring_timeout: int = 15) -> Rota:
    """A round-the-clock rota: every agent (interface -> name) on every line (name -> DIDs).

    `callhub run --demo` loads it for the simulator's lines so FastAGI answers
    as in production.
    """
    ids = {iface: iface.split("/", 1)[-1].split("@", 1)[0] or iface for iface in agents}
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
