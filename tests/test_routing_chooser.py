"""The next-agent choice: rotation order after the previous call's agent, trainees and
inactive agents skipped, busy agents skipped, fallback when nobody is on duty, two calls
together going to different agents, and the position surviving a restart."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
from routing_fixtures import HOTLINE_DID, berlin

from callhub.routing.busy import BusyTracker
from callhub.routing.chooser import Router
from callhub.routing.rota_file import RotaError
from callhub.routing.state import POSITION_FILE, Position, RotaStore, RotationState

MONDAY_10 = berlin("2026-11-30 10:00")


def firsts(router: Router, n: int, did: str = HOTLINE_DID) -> list[str]:
    out = []
    for _ in range(n):
        decision = router.choose(did, MONDAY_10)
        assert decision.result == "routed"
        out.append(decision.targets[0].id)
    return out


def test_rotation_order_skips_trainee_and_inactive(router: Router) -> None:
    decision = router.choose(HOTLINE_DID, MONDAY_10)
    assert [a.id for a in decision.targets] == ["ann", "ben", "cai"]
    assert decision.interfaces == ("PJSIP/1001", "PJSIP/1002", "PJSIP/1003")
    assert decision.ring_timeout == 12 and decision.fallback == "PJSIP/1000"
    assert decision.ring_timeouts == decision.target_timeouts == (12, 20, 8)  # ann, ben, cai
    assert decision.on_duty == 3 and decision.line == "hotline"
    # each next call starts after the agent offered the previous one
    assert firsts(router, 6) == ["ben", "cai", "ann", "ben", "cai", "ann"]
    assert [a.id for a in router.choose(HOTLINE_DID, MONDAY_10).targets] == ["ben", "cai", "ann"]


def test_two_calls_together_start_at_different_agents(router: Router) -> None:
    first = router.choose(HOTLINE_DID, MONDAY_10)
    second = router.choose("4008001005", MONDAY_10)  # the same line through its other DID
    assert first.targets[0] != second.targets[0]
    assert [a.id for a in second.targets] == ["ben", "cai", "ann"]


def test_busy_agent_is_skipped_and_keeps_no_turn(router: Router) -> None:
    router.busy_set.add("PJSIP/1002")  # type: ignore[attr-defined]
    assert firsts(router, 1) == ["ann"]
    decision = router.choose(HOTLINE_DID, MONDAY_10)
    assert [a.id for a in decision.targets] == ["cai", "ann"]
    assert decision.ring_timeouts == (8, 12)  # the timeouts go with the agents, not the slots
    router.busy_set.clear()  # type: ignore[attr-defined]
    assert firsts(router, 2) == ["ann", "ben"]


def test_everyone_busy_gives_the_fallback(router: Router) -> None:
    router.busy_set.update({"PJSIP/1001", "PJSIP/1002", "PJSIP/1003"})  # type: ignore[attr-defined]
    decision = router.choose(HOTLINE_DID, MONDAY_10)
    assert decision.result == "no_agent_available"
    assert decision.targets == () and decision.fallback == "PJSIP/1000"
    assert decision.on_duty == 3


def test_nobody_on_duty_gives_the_fallback(router: Router) -> None:
    decision = router.choose(HOTLINE_DID, berlin("2026-11-30 23:00"))
    assert decision.result == "no_agent_on_duty"
    assert decision.targets == () and decision.fallback == "PJSIP/1000"


def test_only_a_trainee_on_duty_counts_as_nobody(router: Router) -> None:
    rota = router.rota
    hotline = rota.lines["hotline"]
    only_dora = replace(hotline, shifts=(replace(hotline.shifts[0], agents=("dora", "eve")),))
    router.replace_rota(rota.with_line(only_dora))
    decision = router.choose(HOTLINE_DID, MONDAY_10)
    assert decision.result == "no_agent_on_duty" and decision.targets == ()


def test_unknown_did_gives_the_rota_fallback(router: Router) -> None:
    decision = router.choose("5550000", MONDAY_10)
    assert decision.result == "unknown_line" and decision.line is None
    assert decision.fallback == "PJSIP/1000"


def test_a_line_without_a_fallback_of_its_own_takes_the_rotas(router: Router) -> None:
    """docs/rota.md: the rota's `fallback` serves DIDs no line lists and the lines that name
    none (sales), after the last agent or when nobody is on duty."""
    assert router.rota.lines["sales"].fallback is None
    decision = router.choose("4008009000", MONDAY_10)
    assert decision.line == "sales" and decision.fallback == "PJSIP/1000"


def test_position_survives_a_restart(router: Router, rota_file: Path, state_path: Path) -> None:
    assert firsts(router, 2) == ["ann", "ben"]
    restarted = Router(RotaStore(state_path, seed_file=str(rota_file)),
                       RotationState(state_path / POSITION_FILE))
    assert firsts(restarted, 2) == ["cai", "ann"]


def test_a_position_file_that_cannot_be_written_is_said_once_and_routing_goes_on(
        router: Router, state_path: Path) -> None:
    """A full disk, or a path that cannot be replaced: the position lives on in memory,
    and the error was logged at every call; now once per error, and its end is said."""
    state = router.state
    firsts(router, 1)  # outside an event loop each move writes the file at once
    saved = state.writes
    (state_path / POSITION_FILE).unlink()
    (state_path / POSITION_FILE).mkdir()  # every write now fails alike
    with structlog.testing.capture_logs() as logs:
        firsts(router, 3)
        assert state.write_errors == 3 and state.writes == saved
        (state_path / POSITION_FILE).rmdir()
        moved = firsts(router, 1)
    said = [e for e in logs if e["event"] == "routing.position_save_failed"
            and e["log_level"] == "error"]
    assert len(said) == 1 and "Is a directory" in said[0]["error"]
    back, = [e for e in logs if e["event"] == "routing.position_saved"]
    assert back["log_level"] == "info" and back["tries"] == 3
    assert state.writes == saved + 1
    position = RotationState(state_path / POSITION_FILE).get("hotline")
    assert position is not None and position.agent == moved[0]


def test_damaged_position_file_restarts_from_the_top(rota_file: Path, state_path: Path) -> None:
    state_path.mkdir()
    (state_path / POSITION_FILE).write_text("{not json", encoding="utf-8")
    r = Router(RotaStore(state_path, seed_file=str(rota_file)),
               RotationState(state_path / POSITION_FILE))
    assert firsts(r, 2) == ["ann", "ben"]


@pytest.mark.parametrize("hotline", [
    '{"agent": "ben", "index": 1e999, "at": 1}',  # infinity: an OverflowError at start
    '{"agent": "ben", "index": 4294967296, "at": 1}',  # past the shared row's integer
    '{"agent": "%s", "index": 1, "at": 1}' % ("b" * 129),  # past the shared row's column
    '{"agent": 7, "index": 1}',
    '{"agent": "ben", "index": true}',
    '["ben", 1]',
    '{"agent": "ben", "index": 1, "at": 1}, "%s": {"agent": "ann", "index": 0}' % ("l" * 129),
])
def test_an_unusable_line_in_the_position_file_costs_that_line_only(
        rota_file: Path, state_path: Path, hotline: str) -> None:
    state_path.mkdir()
    (state_path / POSITION_FILE).write_text(
        '{"lines": {"sales": {"agent": "dora", "index": 0, "at": 1.5}, "hotline": '
        + hotline + "}}", encoding="utf-8")
    state = RotationState(state_path / POSITION_FILE)
    assert state.get("sales") == Position("dora", 0, 1.5)
    assert all(len(line) <= 128 for line, _ in state.items())
    r = Router(RotaStore(state_path, seed_file=str(rota_file)), state)
    kept = state.get("hotline")
    assert firsts(r, 2) == (["cai", "ann"] if kept else ["ann", "ben"])


@pytest.mark.parametrize("at", ["NaN", "Infinity", "-1", "1e300", '"yesterday"'])
def test_a_position_at_no_usable_time_is_older_than_any_move(
        state_path: Path, at: str) -> None:
    state_path.mkdir()
    (state_path / POSITION_FILE).write_text(
        '{"lines": {"hotline": {"agent": "ben", "index": 1, "at": ' + at + "}}}",
        encoding="utf-8")
    state = RotationState(state_path / POSITION_FILE)
    assert state.get("hotline") == Position("ben", 1, 0.0)
    state.save()  # and the file written from it is plain JSON again
    assert json.loads((state_path / POSITION_FILE).read_text(encoding="utf-8"),
                      parse_constant=lambda c: pytest.fail(f"{c} written"))


def test_rotation_continues_from_a_swapped_in_agent(router: Router) -> None:
    christmas_eve = berlin("2026-12-24 10:00")
    decision = router.choose(HOTLINE_DID, christmas_eve)
    assert decision.targets[0].id == "lead"
    assert decision.ring_timeouts[0] == 12  # lead has no own timeout: the line's, not ann's
    # lead is in no rotation: the next call goes on after the slot lead held (ann's)
    assert router.choose(HOTLINE_DID, berlin("2026-12-28 10:00")).targets[0].id == "ben"


def test_rotation_continues_with_the_successor_of_an_agent_removed_from_it(
        router: Router) -> None:
    """The agent who took the last call leaves the rotation: those after it move up one
    place, so the next call goes to the one who followed it, not the one after that."""
    assert firsts(router, 2) == ["ann", "ben"]
    rota = router.rota
    hotline = rota.lines["hotline"]
    without_ben = replace(hotline, rotation=tuple(a for a in hotline.rotation if a != "ben"),
                          shifts=tuple(replace(s, agents=tuple(a for a in s.agents if a != "ben"))
                                       for s in hotline.shifts),
                          exceptions=())  # some name ben
    router.replace_rota(replace(rota, lines={**rota.lines, "hotline": without_ben}))
    assert firsts(router, 3) == ["cai", "ann", "cai"]


def test_busy_tracker_reads_device_state_and_the_correlator() -> None:
    in_call = {"PJSIP/1003"}
    tracker = BusyTracker([lambda: in_call])
    tracker.feed({"Event": "DeviceStateChange", "Device": "PJSIP/1001", "State": "INUSE"})
    tracker.feed({"Event": "DeviceStateChange", "Device": "PJSIP/1002", "State": "RINGING"})
    tracker.feed({"Event": "ExtensionStatus", "Exten": "1004", "Context": "hints",
                  "Hint": "PJSIP/1004&Custom:DND1004", "Status": "4",
                  "StatusText": "Unavailable"})
    tracker.feed({"Event": "ExtensionStatus", "Exten": "1005", "Hint": "PJSIP/1005",
                  "Status": "2"})
    assert tracker.busy_interfaces() == {"PJSIP/1001", "PJSIP/1003", "PJSIP/1004",
                                         "PJSIP/1005"}
    tracker.feed({"Event": "DeviceStateChange", "Device": "PJSIP/1001", "State": "NOT_INUSE"})
    tracker.feed({"Event": "ExtensionStatus", "Exten": "1005", "Hint": "PJSIP/1005",
                  "Status": "0", "StatusText": "Idle"})
    in_call.clear()
    assert tracker.busy_interfaces() == {"PJSIP/1004"}


def test_device_state_feeds_the_choice(router: Router) -> None:
    tracker = BusyTracker()
    router.busy = tracker.busy_interfaces
    tracker.feed({"Event": "DeviceStateChange", "Device": "PJSIP/1001", "State": "INUSE"})
    assert [a.id for a in router.choose(HOTLINE_DID, MONDAY_10).targets] == ["ben", "cai"]


def test_rota_written_elsewhere_is_picked_up(state_path: Path, rota_file: Path) -> None:
    """`callhub rota load` in another process replaces rota.json; a running router sees it."""
    clock = [0.0]
    store = RotaStore(state_path, seed_file=str(rota_file), clock=lambda: clock[0])
    other = RotaStore(state_path)
    hotline = other.rota.lines["hotline"]
    reordered = replace(hotline, rotation=("cai", "ben", "ann", "dora", "eve"))
    other.replace(other.rota.with_line(reordered))
    assert store.rota.lines["hotline"].rotation[0] == "ann"  # checked at most once a second
    clock[0] = 2.0
    assert store.rota.lines["hotline"].rotation[:3] == ("cai", "ben", "ann")
    with pytest.raises(RotaError, match="shift 'day': agents: 'ben' is not in the line's rotation"):
        other.replace(other.rota.with_line(replace(hotline, rotation=("ann",))))
    router = Router(store)
    assert router.choose(HOTLINE_DID, MONDAY_10).targets[0].id == "cai"


async def test_position_write_is_coalesced_in_the_event_loop(router: Router,
                                                             state_path: Path) -> None:
    import asyncio
    import json

    path = state_path / POSITION_FILE
    assert firsts(router, 3) == ["ann", "ben", "cai"]
    written = json.loads(path.read_text()) if path.exists() else None
    assert written is None or written["lines"]["hotline"]["agent"] != "cai"  # not yet
    loop = asyncio.get_running_loop()
    next_step = loop.create_future()
    loop.call_soon(next_step.set_result, None)
    await next_step  # a step of the loop later (the FastAGI replies go out): not yet
    assert router.state.writes == 0
    await router.state.written()  # off the event loop, in a worker thread
    assert json.loads(path.read_text())["lines"]["hotline"]["agent"] == "cai"
    assert router.state.writes == 1  # three moves, one write
