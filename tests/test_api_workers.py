"""`[api] workers = 2`: a real `callhub run` serves the API from two processes on one port.

The daemon's process deals fresh connections in turn to itself and the worker
(callhub/api/handoff.py); both answer the API alike, and what only the
daemon's process knows (/readyz with its AMI connection) comes the same
through a worker, which forwards it. A worker killed with SIGKILL fails its
supervised task and is started again; no later connection is lost meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from ami_fixtures import SIM_SECRET, SIM_USER
from daemon_fixtures import Daemon, write_pbxs_config

from callhub.api.workers import WORKER_HEADER
from callhub.sim.ami_server import AmiSimulator

TOKEN = "workers-admin-token"


async def _exited(fd: int) -> None:
    """Until the process of pidfd `fd` has exited (its descriptors closed), by `fd`
    becoming readable; closes `fd`. Open it (`os.pidfd_open`) while the process surely
    runs: once it exits, its parent may reap it at once, and its pid then names nothing
    (a pidfd opened after a SIGKILL failed so once in a full run of the suite)."""
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def readable() -> None:  # called again until the reader is removed
        if not gone.done():
            gone.set_result(None)

    asyncio.get_running_loop().add_reader(fd, readable)
    try:
        await asyncio.wait_for(gone, 10)
    finally:
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)


CONNECTIONS = 40


async def _answers(url: str, count: int) -> dict[str | None, list[tuple[int, bytes]]]:
    """`count` requests, each on a new connection, by the process that answered (the
    worker's pid; None: the daemon's); /api and /readyz two by two, so that either
    process gets both."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    seen: dict[str | None, list[tuple[int, bytes]]] = {}
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)) as session:
        for n in range(count):
            path = "/api/v1/calls?limit=5" if n // 2 % 2 else "/readyz"
            async with session.get(url + path, headers=headers) as resp:
                seen.setdefault(resp.headers.get(WORKER_HEADER), []).append(
                    (resp.status, (path + " ").encode() + await resp.read()))
    return seen


@contextlib.asynccontextmanager
async def _two_processes(tmp_path: Path) -> AsyncIterator[tuple[Daemon, int]]:
    """`callhub run` with `[api] workers = 2`, serving: the daemon and its worker's pid."""
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
        yield daemon, started[0]["pid"]
    finally:
        await daemon.kill()
        await sim.stop()


async def test_two_api_processes_share_the_port(tmp_path: Path) -> None:
    async with _two_processes(tmp_path) as (daemon, worker_pid):
        url = daemon.events("daemon.api")[0]["url"]
        seen = await _answers(url, CONNECTIONS)
        assert set(seen) == {None, str(worker_pid)}, set(seen)
        # Dealt in turn: each process served half of the connections.
        assert [len(answers) for answers in seen.values()] == [CONNECTIONS // 2] * 2
        by_process = [sorted(set(answers)) for answers in seen.values()]
        assert by_process[0] == by_process[1]  # the same answers from either process
        assert all(status == 200 for answers in seen.values() for status, _body in answers)

        worker = os.pidfd_open(worker_pid)
        signal.pidfd_send_signal(worker, signal.SIGKILL)
        await _exited(worker)
        # Its task fails, and the supervisor starts another worker, dealt to alike.
        # (api.worker_started is the worker's own line, before the daemon deals to it.)
        await daemon.until(lambda: len(daemon.events("api.worker_serving")) == 2)
        assert any(e["task"] == "api-worker-1" for e in daemon.events("lifecycle.task_failed"))
        new_pid = daemon.events("api.worker_serving")[1]["pid"]
        assert new_pid == daemon.events("api.worker_started")[1]["pid"]
        after = await _answers(url, 20)
        assert sorted(after, key=str) == sorted([None, str(new_pid)], key=str)
        assert [len(answers) for answers in after.values()] == [10, 10]
        assert all(status == 200 for answers in after.values() for status, _body in answers)
        ready = [json.loads(body.split(b" ", 1)[1]) for answers in after.values()
                 for _status, body in answers if body.startswith(b"/readyz")]
        assert all(r["parts"]["api-worker-1"] == {"ready": True, "required": False,
                                                  "reason": None} for r in ready)
        assert await daemon.stop() == 0


async def test_the_worker_goes_with_the_daemon(tmp_path: Path) -> None:
    """The daemon killed with SIGKILL: its worker sees the channel close and exits."""
    async with _two_processes(tmp_path) as (daemon, worker_pid):
        worker = os.pidfd_open(worker_pid)
        await daemon.kill()
        await _exited(worker)  # within 10 s, else TimeoutError
