"""Issue 11's "Done when" with real processes: a hot-standby pair, then a gap nobody saw.

An AMI server over TCP plays calls (cut from recorded Asterisk traces) to two
`callhub run` processes with the same configuration (each its own spool and
ports) sharing one PostgreSQL schema. The first to start is the writer
(`callhub_writer{pbx} 1`), the other the standby (0, and ready on /readyz).
After call 10 the writer is SIGKILLed; the standby takes over within 10 s
and stores the rest, including whatever the writer had not committed. Then,
with no callhub running, 10 more calls are played and their CEL rows put in
a `cel` table; the first callhub started afterwards stores those 10 flagged
`source = "cel"`. Every call is stored once, every worklist entry counts each
call once.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
from daemon_fixtures import WAIT, Daemon
from test_faults_gap import KINDS, SEED, World, mismatches, start, world
from test_faults_wal import assert_worklist_counts_each_call_once, stored, until_stored

from callhub.sim.calls import CallFactory, SynthCall, merge_calls

__all__ = ["world"]  # the fixture, shared with the gap test

VIEWER = "standby-viewer-token"


def pair_config(world: World, name: str) -> Path:
    """One instance's config: the pair's shared settings, its own spool and ports."""
    directory = world.tmp_path / name
    directory.mkdir()
    path = world.config(directory)
    text = re.sub(r"^tokens = .*$", "", path.read_text("utf-8"), count=1, flags=re.M)
    path.write_text(text.replace("[api]\n", f'[api]\ntokens = ["viewer:{VIEWER}"]\n', 1),
                    "utf-8")
    return path


def api_url(daemon: Daemon) -> str:
    [event] = daemon.events("daemon.api")
    return str(event["url"])


async def readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"{api_url(daemon)}/readyz",
            headers={"Authorization": f"Bearer {VIEWER}"}) as response:
        return response.status, await response.json()


async def metric(daemon: Daemon, name: str, labels: str = "") -> float:
    """The sum of `name`'s samples (with these labels) on the daemon's /metrics."""
    async with aiohttp.ClientSession() as session, session.get(
            f"{api_url(daemon)}/metrics") as response:
        text = await response.text()
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    return sum(float(value) for found_labels, value in pattern.findall(text)
               if labels in found_labels)


async def until_metric(daemon: Daemon, name: str, labels: str, value: float) -> None:
    deadline = time.monotonic() + WAIT
    while (seen := await metric(daemon, name, labels)) != value:
        assert time.monotonic() < deadline, f"{name}{{{labels}}} stayed {seen}, not {value}"
        await _tick()


async def _tick() -> None:
    await asyncio.sleep(0.05)  # a poll of another process's metrics, not a pause


async def standing_by(daemon: Daemon) -> dict[str, Any]:
    """Until the instance's election has run (its first tick): its /readyz body."""
    deadline = time.monotonic() + WAIT
    while True:
        _, body = await readyz(daemon)
        if body["parts"].get("election", {}).get("ready"):
            return body
        assert time.monotonic() < deadline, body
        await _tick()


async def test_pair_standby_takes_over_from_a_killed_writer_then_cel_fills_the_gap(
        world: World) -> None:
    factory = CallFactory(seed=SEED, uniqueid_counter=SEED * 100)
    t0 = time.time() - 3600
    calls: list[SynthCall] = [factory.make(KINDS[i % len(KINDS)], t0 + i * 60,
                                           number=f"+86139{i:08d}") for i in range(40)]
    before_kill, after_kill, nobody = calls[:10], calls[10:30], calls[30:]
    a = await start(pair_config(world, "a"))
    b: Daemon | None = None
    try:
        await a.until(lambda: bool(a.events("election.writer")))
        b = await start(pair_config(world, "b"))
        body = await standing_by(b)
        assert body["ready"], body  # the standby is ready, and says which it is
        assert body["parts"]["role/lab"]["detail"] == "standby"
        assert not b.events("election.writer")
        assert await metric(a, "callhub_writer", 'pbx="lab"') == 1
        assert await metric(b, "callhub_writer", 'pbx="lab"') == 0

        # Only the writer exports call metrics: the standby's count stays 0, while its
        # AMI event counter shows it read every event of the first ten calls.
        events = [m for _, m in merge_calls(before_kill)]
        read = await metric(b, "callhub_ami_events_total", 'pbx="lab"')
        await world.sim.send(events)
        await until_metric(a, "callhub_calls_total", "", len(before_kill))
        await until_metric(b, "callhub_ami_events_total", 'pbx="lab"', read + len(events))
        assert await metric(b, "callhub_calls_total") == 0
        assert await metric(b, "callhub_active_calls") == 0
        killed = time.monotonic()
        await a.kill()  # SIGKILL: whatever it had not committed, the standby stores
        await b.until(lambda: bool(b.events("election.writer")))
        takeover = time.monotonic() - killed
        assert takeover < 10.0, f"took over after {takeover:.1f} s"
        assert await metric(b, "callhub_writer", 'pbx="lab"') == 1
        status, body = await readyz(b)
        assert status == 200 and body["parts"]["role/lab"]["detail"] == "writer"

        await world.sim.send([m for _, m in merge_calls(after_kill)])
        await until_stored(world.db, [c.linkedid for c in before_kill + after_kill])
        await until_metric(b, "callhub_db_buffered_calls", "", 0)
        # The new writer counts from its takeover on (the calls that finished while it
        # stood by were the old writer's to count).
        assert await metric(b, "callhub_calls_total") == len(after_kill)
        assert await b.stop() == 0
    finally:
        await a.kill()
        if b is not None:
            await b.kill()
    rows = await stored(world.db)  # fails if a call is there twice
    assert set(rows) == {c.linkedid for c in before_kill + after_kill}
    for call in before_kill + after_kill:
        assert rows[call.linkedid]["source"] == "ami", call.linkedid
        assert mismatches(rows[call.linkedid], call) == [], (call.kind, call.linkedid)
    await assert_worklist_counts_each_call_once(world.db)

    # Nobody listens: the PBX goes on, and cel_pgsql logs every call it sees.
    await world.sim.send([m for _, m in merge_calls(nobody)])
    await world.insert_cel(calls)
    after = await start(world.tmp_path / "b" / "callhub.toml")
    try:
        await after.until(lambda: bool(after.events("cel.recovered")))
        await until_stored(world.db, [c.linkedid for c in calls])
        assert await after.stop() == 0
    finally:
        await after.kill()
    rows = await stored(world.db)
    assert set(rows) == {c.linkedid for c in calls}
    for call in nobody:
        row = rows[call.linkedid]
        assert (row["source"], row["rings_estimated"]) == ("cel", True), call.linkedid
        assert mismatches(row, call) == [], (call.kind, call.linkedid)
    for call in before_kill + after_kill:
        assert rows[call.linkedid]["source"] == "ami", call.linkedid
    await assert_worklist_counts_each_call_once(world.db)


async def test_a_second_callhub_on_the_same_spool_directory_stops_with_a_clear_error(
        world: World) -> None:
    config = pair_config(world, "a")
    first = await start(config)
    second = Daemon(config)
    try:
        await second.start()
        assert second.proc is not None
        code = await asyncio.wait_for(second.proc.wait(), WAIT)
        await second.kill()  # collects the rest of its output
        assert code == 2
        said = "".join(second.lines)
        assert "is in use by another callhub" in said and "CALLHUB_SPOOL_DIR" in said, said
        assert first.proc is not None and first.proc.returncode is None  # untouched
        assert await first.stop() == 0
    finally:
        await first.kill()
        await second.kill()
