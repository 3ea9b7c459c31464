"""The daemon's routing wiring: start_routing from settings (state directory seeded from
rota_file), the demo rota, and busy devices from a PbxIngest's AMI stream."""

from __future__ import annotations

from pathlib import Path

import pytest
from ami_fixtures import Collector, make_ingest, sim_pbx
from prometheus_client import CollectorRegistry
from routing_fixtures import HOTLINE_DID, AgiServer, berlin

from callhub.api.app import make_app
from callhub.api.rota import ROUTER
from callhub.config import Settings, settings_from_mapping
from callhub.routing.chooser import Router
from callhub.routing.service import start_routing
from callhub.sim.agi_client import agi_request, asterisk_environment
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.demo_rota import demo_rota, demo_rota_for
from callhub.store.db import Database


async def test_start_routing_from_settings(tmp_path: Path, rota_file: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLHUB_ROUTING_STATE_DIR", raising=False)
    settings = Settings(spool_dir=str(tmp_path / "spool"), rota_file=str(rota_file))
    registry = CollectorRegistry()
    routing = await start_routing(settings, registry=registry, host="127.0.0.1", port=0)
    try:
        assert (tmp_path / "spool" / "routing" / "rota.json").exists()  # seeded once
        routing.router.clock = lambda: berlin("2026-11-30 10:00")
        address = routing.address
        assert address is not None
        answer = await agi_request(*address, asterisk_environment(did=HOTLINE_DID, caller="1"))
        assert answer.targets == ["PJSIP/1001", "PJSIP/1002", "PJSIP/1003"]
        assert registry.get_sample_value("callhub_route_requests_total",
                                         {"line": "hotline", "result": "routed"}) == 1.0
        db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'api.db'}")
        app = make_app(settings, db, router=routing.router)  # the daemon's api part does this
        served = {route.resource.canonical for route in app.router.routes()  # type: ignore[union-attr]
                  }
        assert served >= {"/api/v1/agents", "/api/v1/rotas/{line}"}
        assert app[ROUTER] is routing.router
        await db.close()
    finally:
        await routing.close()


async def test_invalid_rota_file_does_not_stop_the_daemon(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          ) -> None:
    monkeypatch.delenv("CALLHUB_ROUTING_STATE_DIR", raising=False)
    bad = tmp_path / "bad.toml"
    bad.write_text("[[lines]]\nname = 3\n", encoding="utf-8")
    settings = Settings(spool_dir=str(tmp_path / "spool"), rota_file=str(bad))
    routing = await start_routing(settings, host="127.0.0.1", port=0)
    try:
        address = routing.address
        assert address is not None
        answer = await agi_request(*address, asterisk_environment(did=HOTLINE_DID, caller="1"))
        assert answer.answered and answer.variables["CALLHUB_ROUTE_RESULT"] == "unknown_line"
    finally:
        await routing.close()


def test_demo_rota_covers_every_line_all_day() -> None:
    settings = settings_from_mapping({"pbx": [{
        "name": "demo", "agents": {"PJSIP/1001": "Li Na", "PJSIP/1002": "Wang Wei"},
        "lines": {"4008001000": "sales"}}]})
    rota = demo_rota_for(settings, dids=["4008001000", "4008001001"])
    assert set(rota.lines) == {"sales", "4008001001"}
    router = Router(rota)
    for moment in ("2026-11-30 00:00", "2026-12-06 23:59"):
        decision = router.choose("4008001001", berlin(moment))
        assert decision.result == "routed" and len(decision.targets) == 2
    clash = demo_rota({"PJSIP/1001": "A", "Local/1001@x": "B"}, {"l": ["1"]})
    assert len(clash.agents) == 2


async def test_busy_view_follows_the_ami_stream(agi_server: AgiServer,
                                                ami_simulator: AmiSimulator) -> None:
    routing = await start_routing(Settings(), rota=agi_server.router.rota, listen=False)
    pbx = sim_pbx(ami_simulator, "p06_sip_hunt_rna_then_answer")
    collector = Collector()
    ingest = make_ingest(pbx, collector)
    routing.attach(ingest)
    await ingest.start()
    try:
        await ingest.wait_connected()
        await ami_simulator.send([{"Event": "DeviceStateChange", "Privilege": "call,all",
                                   "Device": "PJSIP/1001", "State": "INUSE"}])
        await collector.until(lambda: any(e.get("Device") == "PJSIP/1001"
                                          for e in collector.events))
        decision = routing.router.choose(HOTLINE_DID, berlin("2026-11-30 10:00"))
        assert [a.interface for a in decision.targets] == ["PJSIP/1002", "PJSIP/1003"]
    finally:
        await ingest.stop()
        await routing.close()


async def test_callhub_run_demo_answers_fastagi(tmp_path: Path) -> None:
    """`callhub run --demo` in-process: FastAGI routes the demo lines by the demo rota, the
    rota API is mounted, and the on-duty gauge is on /metrics."""
    import io
    import socket
    from dataclasses import replace

    import aiohttp

    from callhub.daemon import Daemon, running
    from callhub.sim.demo import Demo
    from callhub.store.db import Database

    with socket.socket() as s:  # a free port for FastAGI (the daemon does not report it)
        s.bind(("127.0.0.1", 0))
        agi_port = s.getsockname()[1]
    from callhub.config import ApiToken

    viewer = ApiToken("viewer", "viewer-token-1234")  # tokens, but no admin among them
    settings = replace(Settings(), api_listen=("127.0.0.1", 0),
                       fastagi_listen=("127.0.0.1", agi_port),
                       spool_dir=str(tmp_path / "spool"), api_tokens=(viewer,))
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}")
    d = Daemon(settings, db=db, out=io.StringIO())
    demo = Demo(rate=0.5)
    try:
        async with running(d, before=demo.before, after=demo.after):
            answer = await agi_request("127.0.0.1", agi_port, asterisk_environment(
                did="4008001000", caller="+8613800000001", port=agi_port))
            assert answer.variables["CALLHUB_LINE"] == "hotline"
            assert answer.variables["CALLHUB_ROUTE_RESULT"] == "routed"
            assert "Local/agent1@agentsim" in answer.targets
            admin = next(t.token for t in d.settings.api_tokens if t.role == "admin")
            assert viewer in d.settings.api_tokens  # kept beside the demo's admin token
            assert f"demo admin token: {admin}" in d.out.getvalue()  # type: ignore[attr-defined]
            async with aiohttp.ClientSession(
                    headers={"Authorization": f"Bearer {admin}"}) as session:
                async with session.get(f"{d.api_url}/api/v1/rotas/hotline") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["dids"] == ["4008001000"]
                async with session.get(f"{d.api_url}/metrics") as resp:
                    text = await resp.text()
            assert 'callhub_agents_on_duty{line="hotline"}' in text
            assert ('callhub_route_requests_total{line="hotline",result="routed"} 1.0'
                    in text)
    finally:
        await db.engine.dispose()
