"""Asterisk 18 with chan_sip: the real SIP traces as chan_sip reports the same calls.

No chan_sip recording exists here, so each chan_pjsip trace (p*, q*, r*) is rewritten
by `traces_fixtures.as_chan_sip`, which applies exactly the documented differences
(SIP/ channels, Down then Ring, no TechCause, cause 16 for a CANCEL, no HangupRequest
on a 486, no queue member or device states). The records must be the same, with the
interfaces renamed PJSIP -> SIP.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ami_fixtures import SIM_SECRET, SIM_USER, Collector, make_ingest
from traces_fixtures import (
    CHAN_SIP_BANNER,
    all_traces,
    as_chan_sip,
    chan_sip_truth,
    stamped,
    trace_messages,
)

from callhub.ami.groundtruth import compare, load_truth, pbx_from_truth
from callhub.ami.parser import MessageSplitter
from callhub.ami.replay import replay_messages
from callhub.config import settings_from_mapping
from callhub.records import CallRecord
from callhub.sim.ami_server import AmiSimulator, format_message

SIP_TRACES = [p for p in all_traces() if p.stem[0] in "pqr"]


def _renamed(records: list[CallRecord]) -> list[dict[str, object]]:
    as_dicts: list[dict[str, object]] = json.loads(
        json.dumps([r.to_dict() for r in records]).replace("PJSIP/", "SIP/"))
    return as_dicts


@pytest.mark.parametrize("path", SIP_TRACES, ids=lambda p: p.stem)
def test_chan_sip_variant_gives_the_same_records(path: Path) -> None:
    messages = trace_messages(path.stem)
    sip = as_chan_sip(messages)
    assert not any("PJSIP/" in v for m in sip for v in m.values())
    assert not any("TechCause" in m or m.get("Event") == "QueueMemberStatus" for m in sip)
    assert all(m["ChannelStateDesc"] == "Down" for m in sip
               if m.get("Event") == "Newchannel" and m["Channel"].startswith("SIP/"))
    truth = load_truth(path)
    sip_truth = chan_sip_truth(truth)
    # Through the splitter with AMI 7's banner, as the daemon reads it.
    data = (CHAN_SIP_BANNER + "\r\n").encode() + b"".join(format_message(m) for m in sip)
    splitter = MessageSplitter()
    parsed = splitter.feed(data)
    assert splitter.banner == CHAN_SIP_BANNER and splitter.malformed == 0
    records = list(replay_messages(parsed, pbx_from_truth(sip_truth)))
    assert compare(records, sip_truth) == []
    original = list(replay_messages(messages, pbx_from_truth(truth)))
    assert [r.to_dict() for r in records] == _renamed(original)


async def test_chan_sip_variants_over_tcp_from_an_asterisk_18_banner() -> None:
    """Every chan_sip variant played by a simulator that greets as AMI 7.0.3, read by the
    daemon's ingest over loopback TCP: each call's record is its ground truth's."""
    sim = AmiSimulator(username=SIM_USER, secret=SIM_SECRET, banner=CHAN_SIP_BANNER)
    await sim.start()
    truths = [chan_sip_truth(load_truth(p)) for p in SIP_TRACES]
    config = dict(truths[0]["expected"]["config"])
    config.update(host=sim.host, port=sim.port, username=SIM_USER, secret=SIM_SECRET)
    pbx = settings_from_mapping({"pbx": [config]}).pbxs[0]
    collector = Collector()
    ingest = make_ingest(pbx, collector)
    wanted = sum(len(t["expected"]["calls"]) for t in truths)
    try:
        await ingest.start()
        await ingest.wait_connected(5)
        for path in SIP_TRACES:
            await sim.send(stamped(as_chan_sip(trace_messages(path.stem))))
        await collector.until(lambda: len(collector.records) >= wanted)
    finally:
        await ingest.stop()
        await sim.stop()
    assert len(collector.records) == wanted
    for truth in truths:
        assert truth["expected"]["config"]["agents"] == config["agents"]
        ids = {c["linkedid"] for c in truth["expected"]["calls"]}
        assert compare([r for r in collector.records if r.linkedid in ids], truth) == []
