"""Shared set-up for the routing tests: a sample rota, a router on real state files, a
running FastAGI server on a loopback port, and the AGI request bytes Asterisk sends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from callhub.config import Settings
from callhub.routing.chooser import Router
from callhub.routing.fastagi import start_fastagi
from callhub.routing.metrics import RoutingMetrics
from callhub.routing.model import Rota
from callhub.routing.rota_file import load_rota
from callhub.routing.state import POSITION_FILE, RotaStore, RotationState

BERLIN = ZoneInfo("Europe/Berlin")
HOTLINE_DID = "4008001004"

# Ring timeouts on the hotline: ann 12 (the line's), ben 20 (his own), cai 8 (the line's
# entry for cai); on sales: ann 15 (the default), ben 20.
# Europe/Berlin. 2026-11-30 is a Monday; 2026-03-29 (clocks go forward 02:00 -> 03:00) and
# 2026-10-25 (back 03:00 -> 02:00) are Sundays; 2026-12-24 Thu, 2026-12-25 Fri.
SAMPLE_ROTA = """\
timezone = "Europe/Berlin"
fallback = "PJSIP/1000"

[[agents]]
id = "ann"
name = "Ann"
interface = "PJSIP/1001"

[[agents]]
id = "ben"
name = "Ben"
interface = "PJSIP/1002"
ring_timeout = 20

[[agents]]
id = "cai"
name = "Cai"
interface = "PJSIP/1003"

[[agents]]
id = "dora"
name = "Dora (trainee)"
interface = "PJSIP/1004"
cleared = false

[[agents]]
id = "eve"
name = "Eve (left)"
interface = "PJSIP/1005"
active = false

[[agents]]
id = "lead"
name = "Group Leader"
interface = "PJSIP/1000"

[[lines]]
name = "hotline"
dids = ["4008001004", "4008001005"]
rotation = ["ann", "ben", "cai", "dora", "eve"]
ring_timeout = 12
ring_timeouts = { cai = 8 }
fallback = "PJSIP/1000"

[[lines.shifts]]
name = "day"
days = ["mon-fri"]
start = "08:00"
end = "17:00"
agents = ["ann", "ben", "cai", "dora", "eve"]

[[lines.shifts]]
name = "evening"
days = ["mon-fri"]
start = "17:00"
end = "22:00"
agents = ["ben", "cai"]

[[lines.shifts]]
name = "night"
days = ["fri", "sat"]
start = "22:00"
end = "06:00"
agents = ["cai"]

[[lines.exceptions]]
name = "christmas"
date = "2026-12-25"
closed = true

[[lines.exceptions]]
name = "ann swaps with lead"
date = "2026-12-24"
swap = { ann = "lead" }

[[lines.exceptions]]
name = "ben away in the afternoon"
date = "2026-12-23"
start = "12:00"
absent = ["ben"]

[[lines]]
name = "sales"
dids = ["4008009000"]
rotation = ["ann", "ben"]

[[lines.shifts]]
name = "always"
days = ["daily"]
start = "00:00"
end = "24:00"
"""


def samples(metrics: RoutingMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The current value of each labelled sample called `name` in the routing registry."""
    out = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def berlin(text: str) -> datetime:
    """A Berlin wall-clock moment as an aware datetime ("2026-11-30 08:00")."""
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN)


def asterisk_agi_request(did: str = HOTLINE_DID, caller: str = "+8613800000011",
                         uniqueid: str = "1795922267.69", script: str = "route",
                         extra: dict[str, str] | None = None) -> bytes:
    """The AGI environment exactly as Asterisk 22 (res_agi.c setup_env) writes it for
    `AGI(agi://127.0.0.1:4573/route)` on a PJSIP trunk channel, blank line included."""
    lines = [
        "agi_network: yes",
        f"agi_network_script: {script}",
        f"agi_request: agi://127.0.0.1:4573/{script}",
        "agi_channel: PJSIP/trunk-0000002a",
        "agi_language: en",
        "agi_type: PJSIP",
        f"agi_uniqueid: {uniqueid}",
        "agi_version: 22.10.1",
        f"agi_callerid: {caller}",
        "agi_calleridname: 张三",
        "agi_callingpres: 0",
        "agi_callingani2: 0",
        "agi_callington: 0",
        "agi_callingtns: 0",
        f"agi_dnid: {did}",
        "agi_rdnis: unknown",
        "agi_context: from-pstn",
        f"agi_extension: {did}",
        "agi_priority: 3",
        "agi_enhanced: 0.0",
        "agi_accountcode: ",
        "agi_threadid: 140245187446464",
    ]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


@pytest.fixture
def rota_file(tmp_path: Path) -> Path:
    path = tmp_path / "rota.toml"
    path.write_text(SAMPLE_ROTA, encoding="utf-8")
    return path


@pytest.fixture
def sample_rota(rota_file: Path) -> Rota:
    return load_rota(rota_file)


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def router(rota_file: Path, state_path: Path) -> Router:
    """A router with real state files, a settable busy set (router.busy_set) and its
    clock on Monday 2026-11-30 10:00 Berlin (day shift: ann, ben, cai, trainee, inactive)."""
    busy: set[str] = set()
    r = Router(RotaStore(state_path, seed_file=str(rota_file)),
               RotationState(state_path / POSITION_FILE), busy=lambda: busy,
               clock=lambda: berlin("2026-11-30 10:00"))
    r.busy_set = busy  # type: ignore[attr-defined]
    return r


@dataclass
class AgiServer:
    host: str
    port: int
    router: Router
    metrics: RoutingMetrics


@pytest.fixture
async def agi_server(router: Router) -> AsyncIterator[AgiServer]:
    """callhub's FastAGI server on a free loopback port."""
    metrics = RoutingMetrics(router=router)
    server = await start_fastagi(Settings(), router, metrics, host="127.0.0.1", port=0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield AgiServer(host, port, router, metrics)
    finally:
        server.close()
        await server.wait_closed()
