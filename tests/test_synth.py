"""Synthetic calls are recorded calls renamed and re-timed: same events, headers, order."""

from __future__ import annotations

import itertools
import re

import pytest
from ami_fixtures import compare_synth
from traces_fixtures import all_traces, trace

from callhub.ami.correlator import Correlator
from callhub.ami.groundtruth import compare, load_truth
from callhub.ami.parser import iter_file_messages
from callhub.config import settings_from_mapping
from callhub.records import CallRecord
from callhub.sim.calls import CallFactory
from callhub.sim.mix import MixSettings, agent_pool, generate_mix
from callhub.sim.templates import SCENARIOS, call_messages, load_template, template_for

START = 1_800_000_000.0
UNIQUEID = re.compile(r"^\d+\.\d+$")
KINDS = [(kind, pjsip) for kind in SCENARIOS for pjsip in (False, True)]


def run_correlator(template_config: dict[str, object], messages: list[dict[str, str]]
                   ) -> list[CallRecord]:
    pbx = settings_from_mapping({"pbx": [template_config]}).pbxs[0]
    correlator = Correlator(pbx, clock=lambda: START + 3600)
    records = []
    for message in messages:
        records += correlator.feed(message)
    return records


@pytest.mark.parametrize(("kind", "pjsip"), KINDS)
def test_generated_call_keeps_the_template_shape_renamed_and_retimed(
        kind: str, pjsip: bool) -> None:
    tpl = template_for(kind, pjsip)
    pool = agent_pool(tpl)
    new_agent = pool[-1] if pool else None
    call = CallFactory(pjsip=pjsip, seed=1, uniqueid_counter=900).make(
        kind, START, ring_seconds=8.3, talk_seconds=21.7, number="+8613911112222",
        caller_name="张三", did="4008001777", agent=new_agent)

    # Same events, same headers, same order.
    assert [m["Event"] for m in call.messages] == [m["Event"] for m in tpl.messages]
    assert [list(m) for m in call.messages] == [list(m) for m in tpl.messages]
    # Renamed: nothing of the recorded call's identity is left.
    old_ids = {v for m in tpl.messages for k, v in m.items()
               if k.lower().endswith(("uniqueid", "linkedid")) and UNIQUEID.match(v)}
    assert tpl.expected["linkedid"] in old_ids
    new_values = [v for m in call.messages for v in m.values()]
    assert not old_ids & set(new_values)
    assert all(m["Linkedid"] == call.linkedid for m in call.messages if "Linkedid" in m)
    assert call.linkedid.endswith(".900")
    old_number = tpl.external_number
    assert old_number and not any(old_number in v for v in new_values)
    assert any("+8613911112222" in v for v in new_values)
    if tpl.inbound:
        assert tpl.did and not any(tpl.did in v for v in new_values)
        assert any(m.get("CallerIDName") == "张三" for m in call.messages)
    # Re-timed: starts at START, every gap keeps its sign (a monotonic map), ring
    # span stretched as asked.
    old_t = [float(m["Timestamp"]) for m in tpl.messages]
    new_t = [float(m["Timestamp"]) for m in call.messages]
    assert new_t[0] == pytest.approx(START, abs=1e-6)
    for (a, b), (x, y) in zip(itertools.pairwise(old_t), itertools.pairwise(new_t),
                              strict=True):
        assert (b - a) * (y - x) >= 0 or abs(y - x) < 2e-6
    if tpl.ring_seconds and tpl.expected.get("ring_seconds") is not None:
        assert call.expected["ring_seconds"] == pytest.approx(8.3)

    # And the correlator makes of it exactly what the call says it should.
    records = run_correlator(tpl.config, call.messages)
    assert compare_synth(records, [call], tolerance=0.05) == []


def test_template_is_the_recorded_call() -> None:
    """Cutting one call out of a trace keeps every event the correlator needs."""
    name = "01_answered_caller_hangup"
    truth = load_truth(trace(name))
    tpl = load_template(name)
    records = run_correlator(truth["expected"]["config"], tpl.messages)
    assert compare(records, truth) == []


def test_call_messages_separates_overlapping_calls() -> None:
    messages = list(iter_file_messages(trace("08_overlapping_calls")))
    truth = load_truth(trace("08_overlapping_calls"))
    first, second = (c["linkedid"] for c in truth["expected"]["calls"])
    one, two = call_messages(messages, first), call_messages(messages, second)
    assert one and two
    assert not {id(m) for m in one} & {id(m) for m in two}
    assert all(m.get("Linkedid", first) == first for m in one)


def test_mix_is_overlapping_unique_and_deterministic() -> None:
    settings = MixSettings(rate_per_minute=20)
    calls = list(itertools.islice(generate_mix(START, settings, seed=9), 40))
    again = list(itertools.islice(generate_mix(START, settings, seed=9), 40))
    assert [c.messages for c in calls] == [c.messages for c in again]
    assert len({c.linkedid for c in calls}) == 40
    uniqueids = [m["Uniqueid"] for c in calls for m in c.messages
                 if m["Event"] == "Newchannel"]
    assert len(uniqueids) == len(set(uniqueids))
    channels = [m["Channel"] for c in calls for m in c.messages if m["Event"] == "Newchannel"]
    assert len(channels) == len(set(channels))
    starts = [c.start for c in calls]
    assert starts == sorted(starts)
    mean_gap = (starts[-1] - starts[0]) / 39
    assert 1.5 < mean_gap < 6.0  # about 3 s at 20 calls a minute
    assert sum(1 for a, b in itertools.pairwise(calls) if b.start < a.end) > 5
    assert len({c.kind for c in calls}) >= 5


def test_every_scenario_template_is_packaged() -> None:
    names = {n for s in SCENARIOS.values() for n in (s.local, s.pjsip) if n}
    recorded = {p.stem for p in all_traces()}
    assert names <= recorded
    for name in names:
        assert load_template(name).messages
