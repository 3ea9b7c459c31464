"""One supervised lifecycle: a task that dies is logged, restarted (or stops the daemon) by
its declared policy, and /readyz says which part is down and why meanwhile.

Failures are real: a spool directory replaced by a file under the running writer, a
FastAGI port held by another socket, an API port held by another socket, and a `stop`
task that raises inside a real `callhub run` process.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from store_fixtures import auth, make_call
from structlog.testing import capture_logs

from callhub.api.app import make_app
from callhub.config import Settings
from callhub.daemon import Daemon, running
from callhub.lifecycle import Health, Policy, Retries, Supervisor
from callhub.sim.agi_client import agi_request, asterisk_environment
from callhub.store.db import Database
from callhub.store.spool import Spool
from callhub.store.tables import calls
from callhub.store.writer import CallWriter

WAIT = 30.0
ROOT = Path(__file__).resolve().parent.parent


def fast_supervisor() -> Supervisor:
    return Supervisor(backoff_base=0.02, backoff_max=0.1)


def break_spool(spool_dir: Path) -> Path:
    """Put a file where the spool's directory was (the directory is kept aside)."""
    away = spool_dir.with_name("spool-away")
    spool_dir.rename(away)
    spool_dir.write_text("not a directory\n")
    return away


def mend_spool(spool_dir: Path, away: Path) -> None:
    spool_dir.unlink()
    away.rename(spool_dir)


async def readyz(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz", headers=auth("viewer"))
    return response.status, await response.json()


async def test_a_writer_whose_spool_breaks_is_restarted_and_readyz_says_so_meanwhile(
        any_db: Database, api_settings: Settings) -> None:
    spool_dir = Path(api_settings.spool_dir)
    Spool(spool_dir).append([make_call(f"spooled-{i}") for i in range(3)])  # an earlier run's
    supervisor = fast_supervisor()
    writer = CallWriter(any_db, api_settings, supervisor=supervisor)
    client: TestClient[Any, Any] = TestClient(TestServer(
        make_app(api_settings, any_db, supervisor=supervisor)))
    await client.start_server()
    # The spool's directory is replaced by a file: reading the spool raises an OSError
    # (NotADirectoryError) inside the writer's task, whoever runs the tests (root too).
    away = break_spool(spool_dir)
    try:
        with capture_logs() as logs:
            await writer.start()
            task = supervisor.tasks["writer"]
            async with asyncio.timeout(WAIT):
                await task.wait_failures(2)
            status, body = await readyz(client)
            assert status == 503 and body["ready"] is False
            part = body["parts"]["writer"]
            assert part["ready"] is False and part["required"] is True
            assert part["reason"].startswith("NotADirectoryError")
            assert f"writer: {part['reason']}" in body["reasons"]
            assert body["parts"]["database"]["ready"] is True  # only the writer is down

            mend_spool(spool_dir, away)
            async with asyncio.timeout(WAIT):
                await writer.wait_written()
                await writer.health.wait_ready()
        status, body = await readyz(client)
        assert status == 200 and body["parts"]["writer"] == {
            "ready": True, "required": True, "reason": None}
        assert task.restarts >= 2 and task.failures >= 2
        failed = [e for e in logs if e["event"] == "lifecycle.task_failed"]
        assert len(failed) == task.failures
        assert all(e["task"] == "writer" and e["log_level"] == "error"
                   and e["policy"] == "restart" for e in failed)
        assert isinstance(failed[0]["exc_info"], NotADirectoryError)
        assert any(e["event"] == "lifecycle.task_restarting" for e in logs)
        async with any_db.connection() as conn:
            ids = list((await conn.scalars(sa.select(calls.c.linkedid))).all())
        assert sorted(ids) == ["spooled-0", "spooled-1", "spooled-2"]  # each once
    finally:
        await writer.stop()
        await client.close()


async def test_a_restart_task_is_restarted_with_growing_capped_backoff() -> None:
    supervisor = Supervisor(backoff_base=0.01, backoff_max=0.04)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0)  # it ran, then
        raise ConnectionResetError("peer went away")

    with capture_logs() as logs:
        task = supervisor.spawn("flaky", flaky)
        async with asyncio.timeout(WAIT):
            await task.wait_failures(6)
        await supervisor.aclose()
    delays = [e["retry_in"] for e in logs if e["event"] == "lifecycle.task_restarting"]
    assert runs >= 6 and len(delays) >= 5
    assert all(d <= 0.04 for d in delays) and min(delays[3:]) >= 0.02  # up to the cap
    assert delays[0] <= 0.01
    assert not supervisor.failed.is_set()  # restart, not stop
    (state,) = await supervisor.states()
    assert state.ready is False and state.reason == "stopped"


async def test_a_stop_cancelled_by_its_caller_is_cancelled_not_finished() -> None:
    """`Task.stop` waits for its task to end; when the caller is cancelled meanwhile (a
    timeout around a shutdown), the caller must see it, not go on as if the task had
    ended (stop swallowed it: the daemon then closed what the task was still using)."""
    supervisor = Supervisor()
    cancelled, release = asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            await release.wait()  # its shutdown takes a while
            raise

    task = supervisor.spawn("slow", slow_to_stop)
    await asyncio.sleep(0)  # it started and waits
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await task.stop()
    assert cancelled.is_set() and not task.done
    release.set()
    async with asyncio.timeout(WAIT):
        await task.wait()
    await supervisor.aclose()


async def test_fastagi_port_in_use_is_a_down_part_naming_the_setting_until_it_frees(
        any_db: Database, api_settings: Settings) -> None:
    blocker = socket.create_server(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    settings = replace(api_settings, api_listen=("127.0.0.1", 0),
                       fastagi_listen=("127.0.0.1", port))
    d = Daemon(settings, db=any_db, out=io.StringIO(), supervisor=fast_supervisor())
    try:
        with capture_logs() as logs:
            async with running(d):
                fastagi = d.supervisor.parts["fastagi"]
                assert fastagi.ready is False
                client: TestClient[Any, Any]
                async with TestClient(TestServer(make_app(
                        settings, any_db, supervisor=d.supervisor))) as client:
                    status, body = await readyz(client)
                    assert status == 503
                    reason = body["parts"]["fastagi"]["reason"]
                    assert f"127.0.0.1:{port}" in reason
                    assert "fastagi.listen" in reason and "CALLHUB_FASTAGI_LISTEN" in reason
                    assert body["reasons"] == [f"fastagi: {reason}"]  # nothing else is down
                    for name in ("database", "writer", "keeper"):
                        assert body["parts"][name]["ready"] is True, name

                    blocker.close()  # the port frees: FastAGI listens on its next try
                    async with asyncio.timeout(WAIT):
                        await fastagi.wait_ready()
                    status, body = await readyz(client)
                    assert status == 200 and body["ready"] is True
                answer = await agi_request("127.0.0.1", port, asterisk_environment(
                    did="4008001000", caller="+8613800000001", port=port))
                assert answer.variables["CALLHUB_ROUTE_RESULT"] == "unknown_line"
    finally:
        blocker.close()
    failed = [e for e in logs if e["event"] == "lifecycle.task_failed"]
    assert failed and all(e["task"] == "fastagi" and e["log_level"] == "error" for e in failed)
    assert "CALLHUB_FASTAGI_LISTEN" in failed[0]["error"]


def run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHUB_")}
    env.update(CALLHUB_API_LISTEN="127.0.0.1:0", CALLHUB_FASTAGI_LISTEN="127.0.0.1:0",
               CALLHUB_LOG_LEVEL="info", CALLHUB_SPOOL_DIR=str(tmp_path / "spool"),
               PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def run_process(tmp_path: Path, env: dict[str, str],
                      *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


DOOMED = """
import sys
from contextlib import asynccontextmanager

from callhub import daemon
from callhub.cli import main
from callhub.lifecycle import Policy


@asynccontextmanager
async def doomed(d):
    async def run():
        raise RuntimeError("injected failure")

    async with d.supervisor.task("doomed", run, policy=Policy.%s):
        yield


daemon.PARTS.append(doomed)
sys.exit(main(["run"]))
"""


async def test_a_stop_policy_task_that_dies_stops_callhub_run_with_a_non_zero_exit(
        tmp_path: Path) -> None:
    env = run_env(tmp_path, CALLHUB_API_TOKENS="admin:admin-token-0001")
    code, _, err = await run_process(tmp_path, env, "-c", DOOMED % Policy.STOP.name)
    assert code == 1, err[-3000:]
    assert err.rstrip().splitlines()[-1] == (
        "callhub: doomed failed (RuntimeError: injected failure); its policy stops the daemon")
    logged = json_lines(err)
    failed = [e for e in logged if e["event"] == "lifecycle.task_failed"]
    assert [(e["task"], e["policy"], e["level"]) for e in failed] == [
        ("doomed", "stop", "error")]
    assert "RuntimeError: injected failure" in failed[0]["exception"]
    assert logged[-1]["event"] == "daemon.stopped"  # a clean stop, every part in reverse


async def test_api_port_in_use_names_the_setting_and_no_tokens_warns(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as blocker:
        port = blocker.getsockname()[1]
        env = run_env(tmp_path, CALLHUB_API_LISTEN=f"127.0.0.1:{port}")
        code, out, err = await run_process(tmp_path, env, "-m", "callhub", "run")
    assert code == 2, err[-3000:]
    last = err.rstrip().splitlines()[-1]
    assert last.startswith(f"callhub: the API cannot listen on 127.0.0.1:{port}")
    assert "api.listen" in last and "CALLHUB_API_LISTEN" in last
    (warning,) = [e for e in json_lines(err) if e["event"] == "api.no_tokens"]
    assert warning["level"] == "warning"
    assert "401" in warning["hint"] and "CALLHUB_API_TOKENS" in warning["hint"]
    assert "callhub API:" not in out


def _printed_by(script: str) -> Any:
    """What `script`, run in a Python process of its own, printed as JSON (settle_heap
    changes the whole process)."""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's M_TOP_PAD is glibc's")
def test_a_settled_heap_keeps_its_top_so_freed_blocks_cost_no_page_faults() -> None:
    # Blocks of 100 kB (a socket read's size, under glibc's mmap threshold) made and
    # freed 30 at a time, more than the holes in the heap hold: glibc gives the top back
    # after each round and faults it in again at the next, unless the top is kept.
    script = (
        "import json, resource\n"
        "from callhub.lifecycle import settle_heap\n"
        "def faults():\n"
        "    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(50):\n"
        "        blocks = [bytes(100_000) for _ in range(30)]\n"
        "        del blocks\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start\n"
        "before = faults()\n"
        "settle_heap()\n"
        "print(json.dumps([before, faults()]))\n")
    before, after = _printed_by(script)
    assert before > 50 * 100  # each round faulted most of its 3 MB in again
    assert after < before / 20


def test_settle_heap_freezes_what_the_process_built_and_collects_the_young_less_often() -> None:
    script = (
        "import gc, json\n"
        "from callhub.lifecycle import YOUNG_COLLECTION_EVERY, settle_heap\n"
        "kept = [{'n': n} for n in range(1000)]\n"
        "before = gc.get_freeze_count()\n"
        "settle_heap()\n"
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold(),\n"
        "                  YOUNG_COLLECTION_EVERY, len(kept)]))\n")
    before, frozen, threshold, young, _ = _printed_by(script)
    assert before == 0
    assert frozen >= 1000
    assert threshold[0] == young > 700


def test_retries_tell_news_from_repeats_and_count_to_the_end() -> None:
    health = Health("keeper")
    health.up()
    retries = Retries(health)
    said = [retries.failed(error, "tick failed")
            for error in ("ConnectionRefusedError", "ConnectionRefusedError", "TimeoutError",
                          "TimeoutError", "ConnectionRefusedError")]
    assert said == [True, False, True, False, True]
    assert not health.ready and health.reason == "tick failed; 5 tries"
    assert retries.succeeded() == 5 and health.ready
    assert retries.succeeded() == 0  # nothing to say when nothing failed
    assert retries.failed("ConnectionRefusedError")  # a new outage is news again
