"""An AMI user that lacks a read class callhub needs is found out from its events.

The real traces are cut as Asterisk cuts them for a user (callhub.sim.ami_user):
cut without a class, they give wrong records (which is why it matters), and the
watch names that class; cut for the shipped user, it names none.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import structlog
from ami_fixtures import Collector, make_ingest, sim_pbx
from traces_fixtures import all_traces

from callhub.ami.groundtruth import compare, load_truth, pbx_from_truth
from callhub.ami.parser import AmiMessage, iter_messages
from callhub.ami.read_classes import WANTS, ReadClassWatch
from callhub.ami.replay import replay_messages
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.ami_user import AmiUser, event_offsets

EVERY_CLASS = frozenset({"call", "agent", "dialplan", "cdr", "system", "security", "dtmf",
                         "agi", "reporting"})
QUEUE_TRACES = ("07a_queue_answered", "07b_queue_abandoned", "07c_queue_rna_then_answer",
                "13_queuestatus_midcall")


def without(read_class: str) -> AmiUser:
    return AmiUser(read=EVERY_CLASS - {read_class})


SHIPPED = AmiUser(read=frozenset({"call", "agent", "dialplan"}))


def sent(user: AmiUser, path: Path) -> list[AmiMessage]:
    """The messages Asterisk sends `user` of a trace (its login reply included)."""
    data = path.read_bytes()
    cut, _ = user.cut(data, event_offsets(data))
    return list(iter_messages([cut]))


def events(user: AmiUser, paths: Iterable[Path]) -> list[AmiMessage]:
    """The events of several traces, one after another, as one session sends them (not
    those answering the recording session's own actions)."""
    return [m for path in paths for m in sent(user, path)
            if "Event" in m and "ActionID" not in m]


def watched(messages: Iterable[AmiMessage]) -> set[str]:
    watch = ReadClassWatch()
    for message in messages:
        if message["Event"] in WANTS.events:
            watch.seen(message)
    return watch.missing


def traces(*stems: str) -> list[Path]:
    return [p for p in all_traces() if not stems or p.stem in stems]


def wrong_records(user: AmiUser, paths: Iterable[Path]) -> int:
    """Traces whose records, cut for `user`, differ from their ground truth."""
    wrong = 0
    for path in paths:
        truth = load_truth(path)
        records = list(replay_messages(iter(sent(user, path)), pbx_from_truth(truth)))
        wrong += bool(compare(records, truth))
    return wrong


def test_the_shipped_user_lacks_nothing_in_any_trace_or_in_all_of_them_at_once() -> None:
    for path in traces():
        assert watched(events(SHIPPED, [path])) == set(), path.stem
    assert watched(events(SHIPPED, traces())) == set()


def test_a_user_without_dialplan_is_found_and_its_calls_are_wrong() -> None:
    """Without `dialplan` missed calls come out abandoned and outbound ones internal."""
    assert wrong_records(without("dialplan"), traces()) > 0
    assert watched(events(without("dialplan"), traces())) == {"dialplan"}


def test_a_user_without_agent_is_found_once_calls_went_through_a_queue() -> None:
    """Without `agent` the queue's calls lose their queue; calls that never queue cannot
    tell, and are not taken for a missing class."""
    queued = traces(*QUEUE_TRACES)
    assert len(queued) == len(QUEUE_TRACES)
    assert wrong_records(without("agent"), queued) == len(queued)
    assert watched(events(without("agent"), queued)) == {"agent"}
    unqueued = [p for p in traces() if p.stem not in QUEUE_TRACES]
    assert watched(events(without("agent"), unqueued)) == set()


def test_a_user_without_call_is_found() -> None:
    assert wrong_records(without("call"), traces()) == len(traces())
    assert watched(events(without("call"), traces())) == {"call"}


def test_one_call_looping_in_the_dialplan_is_not_taken_for_a_missing_call_class() -> None:
    """A session that starts while one call loops in an IVR (an operator's menu played
    again and again) gets that call's dialplan events and no call event for as long as
    the loop lasts: the `call` class is there, the call just made no channel yet."""
    dialplan = [m for m in events(SHIPPED, traces("01_answered_caller_hangup"))
                if m["Event"] == "Newexten"]
    assert len({m["Linkedid"] for m in dialplan}) == 1
    assert watched(dialplan * 20) == set()


def test_a_class_found_missing_is_cleared_by_its_first_event_in_a_later_session() -> None:
    watch = ReadClassWatch()
    for message in events(without("dialplan"), traces()):
        if message["Event"] in WANTS.events:
            watch.seen(message)
    assert watch.missing == {"dialplan"}
    watch.new_session()  # manager.conf mended, `manager reload`, a new login
    first_newexten = next(m for m in events(SHIPPED, traces()) if m["Event"] == "Newexten")
    assert watch.seen(first_newexten) and watch.missing == set()


async def test_the_ingest_warns_once_and_names_the_class_on_readyz_until_it_comes(
        ami_simulator: AmiSimulator) -> None:
    """Over AMI on TCP: a session whose user lacks `dialplan` is warned of once, with what
    to set, and the part `ami/<pbx>` says it; the class's first event clears it."""
    sim = ami_simulator
    pbx = sim_pbx(sim)
    collector = Collector()  # its listener runs after the watch's: waits on each event
    ingest = make_ingest(pbx, collector)
    part = f"ami/{pbx.name}"

    async def detail() -> str | None:
        [state] = [s for s in await ingest.supervisor.states() if s.name == part]
        return state.detail

    lacking = events(without("dialplan"), traces())
    newexten = next(m for m in events(SHIPPED, traces()) if m["Event"] == "Newexten")
    try:
        with structlog.testing.capture_logs() as logs:
            await ingest.start()
            await ingest.wait_connected(5)
            await sim.send(lacking)
            await collector.until(lambda: bool(ingest.read_classes.missing))
            said = await detail()
            await sim.send([newexten])
            await collector.until(lambda: not ingest.read_classes.missing)
            cleared = await detail()
    finally:
        await ingest.stop()
    assert said is not None and "dialplan" in said and "read = call,agent,dialplan" in said
    assert cleared is None
    warned = [e for e in logs if e["event"] == "ami.read_class_missing"]
    assert [(e["read_class"], e["log_level"]) for e in warned] == [("dialplan", "warning")]
    assert "manager reload" in warned[0]["hint"]
    assert [e["read_class"] for e in logs if e["event"] == "ami.read_class_back"] == [
        "dialplan"]
