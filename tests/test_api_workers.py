"""`[api] workers = 2`: a real `callhub run` serves the API from two processes on one port.

Fresh connections land on either process (SO_REUSEPORT); both answer the API
alike, and what only the daemon's process knows (/readyz with its AMI
connection) comes the same through a worker, which forwards it.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
from ami_fixtures import SIM_SECRET, SIM_USER
from daemon_fixtures import Daemon, write_pbxs_config

from callhub.api.workers import WORKER_HEADER
from callhub.sim.ami_server import AmiSimulator

TOKEN = "workers-admin-token"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
CONNECTIONS = 40


async def test_two_api_processes_share_the_port(tmp_path: Path) -> None:
    sim = AmiSimulator(username=SIM_USER, secret=SIM_SECRET)
    await sim.start()
    config = write_pbxs_config(tmp_path, {"lab": sim}, tokens=[f"admin:{TOKEN}"])
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[api]\n", "[api]\nworkers = 2\n"), encoding="utf-8")
    daemon = Daemon(config)
    await daemon.start()
    try:
        await daemon.until(lambda: bool(daemon.events("daemon.api")))
        started = daemon.events("api.worker_started")
        assert len(started) == 1
        worker_pid = started[0]["pid"]
        url = daemon.events("daemon.api")[0]["url"]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        seen: dict[str | None, list[tuple[int, bytes]]] = {}
        # A new connection each time: the kernel picks the process per connection.
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as session:
            for n in range(CONNECTIONS):
                path = "/api/v1/calls?limit=5" if n % 2 else "/readyz"
                async with session.get(url + path, headers=headers) as resp:
                    seen.setdefault(resp.headers.get(WORKER_HEADER), []).append(
                        (resp.status, (path + " ").encode() + await resp.read()))
        assert set(seen) == {None, str(worker_pid)}, set(seen)
        by_process = [sorted(set(answers)) for answers in seen.values()]
        assert by_process[0] == by_process[1]  # the same answers from either process
        assert all(status == 200 for answers in seen.values() for status, body in answers
                   if body.startswith(b"/api"))
        assert await daemon.stop() == 0
        assert not _alive(worker_pid)  # the worker went with the daemon
    finally:
        await daemon.kill()
        await sim.stop()
