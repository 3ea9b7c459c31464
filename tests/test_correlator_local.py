"""Dialing through Local channels (FreePBX ring groups, queues, follow-me): the attempts
are the devices the Local legs reach, never the Local legs (DESIGN.md, "Local channel").

Every case is r01 (a ring group `Dial(Local/1001@ext-local/n&Local/1002@ext-local/n)`,
each Local half dialling its phone; 1002 answers) with its recorded events rewritten.
"""

from __future__ import annotations

from dataclasses import replace

from traces_fixtures import (
    about,
    first,
    like,
    rewritten,
    stamped,
    trace_messages,
    trace_pbx,
)

from callhub.ami.correlator import Correlator
from callhub.ami.parser import AmiMessage
from callhub.config import PbxConfig
from callhub.records import CallRecord

R01 = "r01_sip_ringgroup_local_members"
TRUNK = "PJSIP/trunk-0000004e"
L1001, L1002 = "Local/1001@ext-local-00000004", "Local/1002@ext-local-00000005"
PHONE1, PHONE2 = "PJSIP/1001-0000004f", "PJSIP/1002-00000050"
OUTER_BRIDGE = "4da11c57-dee6-4805-943b-4813ebc2248b"
INNER_BRIDGE = "f1b25f47-dcf4-43fa-bbbd-74de462ac341"
DIAL_EVENTS = ("DialBegin", "DialState", "DialEnd")


def r01(member_status: bool = True) -> list[AmiMessage]:
    """The trace's events; without `member_status`, none of its QueueMemberStatus (the lab
    PBX also has a queue `fpbx` whose members are the ring group's Local legs with
    state_interface=PJSIP/100N, and says so when a member's state changes)."""
    return [m for m in stamped(trace_messages(R01))
            if member_status or m.get("Event") != "QueueMemberStatus"]


def correlate(messages: list[AmiMessage], pbx: PbxConfig | None = None,
              correlator: Correlator | None = None) -> CallRecord:
    correlator = correlator or Correlator(pbx or trace_pbx(R01))
    records = [r for m in messages for r in correlator.feed(m)]
    assert correlator.active_calls == 0, "a call stayed open"
    (record,) = records
    return record


def attempts(record: CallRecord) -> list[tuple[str, str | None]]:
    return [(a.interface, a.result) for a in record.attempts]


def no_local_names(record: CallRecord) -> bool:
    names = [a.interface for a in record.attempts] + [record.agent or ""]
    return not any(n.startswith("Local/") for n in names)


def inner_dial(m: AmiMessage, local: str) -> bool:
    """A Dial event of the Local half `local;2` (the Local leg dialling its phone)."""
    return m.get("Event") in DIAL_EVENTS and m.get("Channel", "").startswith(local)


def without_phone(messages: list[AmiMessage], local: str, phone: str) -> list[AmiMessage]:
    """The Local leg `local` dials no phone: its inner dial and the phone's channel go."""
    return [m for m in messages if not inner_dial(m, local) and not about(m, phone)]


def test_the_ring_group_trace_names_the_phones() -> None:
    record = correlate(r01())
    assert attempts(record) == [("PJSIP/1001", "cancelled"), ("PJSIP/1002", "answered")]
    assert record.agent == "PJSIP/1002" and record.agent_name == "Agent Two"
    assert no_local_names(record)


def test_a_phone_dialled_before_its_local_leg_is_reported_is_still_the_attempt() -> None:
    """The Local half runs on its own thread: its DialBegin to the phone may come before
    the caller's DialBegin to the Local leg."""
    messages = r01()
    outer = first(messages, "DialBegin", f"{L1001};1")
    inner = first(messages, "DialBegin", PHONE1)
    assert outer < inner
    reordered = messages[:outer] + messages[outer + 1:inner + 1] + [messages[outer]] \
        + messages[inner + 1:]
    record = correlate(reordered)
    assert attempts(record) == [("PJSIP/1001", "cancelled"), ("PJSIP/1002", "answered")]
    assert record.ring_seconds == correlate(r01()).ring_seconds


def test_a_local_leg_that_dials_no_phone_is_no_attempt_unless_it_is_an_agent() -> None:
    """Local/1001@ext-local goes to voicemail instead of the phone: no attempt of an
    interface no configuration knows; configured as an agent, it is that agent's attempt."""
    messages = without_phone(r01(member_status=False), L1001, PHONE1)
    record = correlate(messages)
    assert attempts(record) == [("PJSIP/1002", "answered")]
    pbx = trace_pbx(R01)
    agents = {**pbx.agents, "Local/1001@ext-local": "Front desk"}
    record = correlate(messages, replace(pbx, agents=agents))
    assert attempts(record) == [("Local/1001@ext-local", "cancelled"),
                                ("PJSIP/1002", "answered")]


# -- queue members Local/100N@from-queue/n with state_interface=PJSIP/100N --------------


def queue_with_local_members(messages: list[AmiMessage], *,
                             member_status: bool = True,
                             status_after_call: bool = False) -> list[AmiMessage]:
    """The ring group turned into a FreePBX queue: each outer DialBegin is preceded by
    the queue's AgentCalled for member `Local/100N@from-queue/n`, and the PBX reported
    (QueueMemberStatus) that member's state interface `PJSIP/100N`."""
    messages = rewritten(messages, {"@ext-local": "@from-queue"})
    recorded_status = next(m for m in stamped(trace_messages("q05_sip_pickup"))
                           if m.get("Event") == "QueueMemberStatus")
    out: list[AmiMessage] = []
    statuses = []
    for m in messages:
        dest = m.get("DestChannel", "")
        if m.get("Event") == "DialBegin" and m.get("Channel", "").startswith(TRUNK):
            exten = dest.split("@")[0].removeprefix("Local/")
            member = f"Local/{exten}@from-queue/n"
            out.append(like(m, "AgentCalled", Queue="fpbx", Interface=member,
                            MemberName=f"Agent {exten}"))
            statuses.append(like(recorded_status, "QueueMemberStatus", Queue="fpbx",
                                 Interface=member, StateInterface=f"PJSIP/{exten}",
                                 Timestamp=m["Timestamp"]))
            if status_after_call:
                out.append(statuses[-1])
        out.append(m)
    if member_status and not status_after_call:
        out = statuses + out
    return out


def test_queue_members_through_local_channels_are_their_phones() -> None:
    record = correlate(queue_with_local_members(r01(member_status=False)))
    assert record.queue == "fpbx"
    assert attempts(record) == [("PJSIP/1001", "cancelled"), ("PJSIP/1002", "answered")]
    assert record.agent == "PJSIP/1002" and no_local_names(record)


def test_a_local_queue_member_ringing_out_is_a_no_answer_of_its_phone() -> None:
    """The queue gives up on member 1001 (AgentRingNoAnswer names its Local leg) just
    before 1002 answers: the phone behind that leg rang out, it was not cancelled."""
    messages = queue_with_local_members(r01(member_status=False))
    answer = first(messages, "DialEnd", PHONE2)
    ring = messages[first(messages, "DialState", f"{L1001.replace('ext-local', 'from-queue')};1")]
    ring_out = like(ring, "AgentRingNoAnswer", Queue="fpbx",
                    Interface="Local/1001@from-queue/n", Timestamp=messages[answer]["Timestamp"])
    record = correlate([*messages[:answer], ring_out, *messages[answer:]])
    assert attempts(record) == [("PJSIP/1001", "no_answer"), ("PJSIP/1002", "answered")]


def test_a_local_queue_member_that_dials_no_phone_is_its_state_interface() -> None:
    """The member's Local leg reaches the phone by a way AMI does not show (no inner
    DialBegin): the StateInterface the PBX reported names the device."""
    phoneless = without_phone(without_phone(r01(member_status=False), L1001, PHONE1),
                              L1002, PHONE2)
    for status_after_call in (False, True):
        record = correlate(queue_with_local_members(phoneless,
                                                    status_after_call=status_after_call))
        assert attempts(record) == [("PJSIP/1001", "cancelled"), ("PJSIP/1002", "answered")]
        assert record.agent == "PJSIP/1002" and record.outcome == "answered"
    unknown = correlate(queue_with_local_members(phoneless, member_status=False))
    assert unknown.attempts == [] and unknown.agent is None


def test_the_pbx_naming_a_local_members_device_makes_its_leg_that_devices_attempt() -> None:
    """In the recording the PBX reported (QueueMemberStatus of its queue `fpbx`) that
    Local/1001@ext-local's state interface is PJSIP/1001: a ring group leg through it
    that dials no phone is still PJSIP/1001's attempt."""
    assert any(m.get("Interface") == "Local/1001@ext-local/n" for m in r01())
    record = correlate(without_phone(r01(), L1001, PHONE1))
    assert attempts(record) == [("PJSIP/1001", "cancelled"), ("PJSIP/1002", "answered")]


# -- follow-me: Local dialing Local dialing the phone ----------------------------------


def through_another_local(messages: list[AmiMessage], local: str, outer: str,
                          uniqueids: tuple[str, str]) -> list[AmiMessage]:
    """The caller dials `outer` (a follow-me Local leg) whose ;2 half dials `local`,
    which dials the phone: every trunk dial event to `local` becomes one to `outer`
    plus the same event from `outer;2` to `local`; `outer` has channels like `local`'s."""
    one, two = (m for m in messages if m.get("Event") == "Newchannel"
                and m["Channel"].startswith(local))
    renames = {local: outer, one["Uniqueid"]: uniqueids[0], two["Uniqueid"]: uniqueids[1]}
    out: list[AmiMessage] = []
    for m in messages:
        own = m.get("Channel", "").startswith(local)
        if m.get("Event") == "Newchannel" and own:
            out.append(rewritten([m], renames)[0])
        from_trunk = m.get("Channel", "").startswith(TRUNK)
        if m.get("Event") in DIAL_EVENTS and from_trunk and m["DestChannel"].startswith(local):
            out.append({**m, "DestChannel": m["DestChannel"].replace(local, outer),
                        "DestUniqueid": uniqueids[0]})
            out.append({**m, "Channel": f"{outer};2", "Uniqueid": uniqueids[1]})
            continue
        out.append(m)
        if m.get("Event") in ("HangupRequest", "SoftHangupRequest", "Hangup") and own:
            out.append(rewritten([m], renames)[0])
    return out


def follow_me(messages: list[AmiMessage]) -> list[AmiMessage]:
    """Each ring-group member reached through a follow-me Local leg of its own."""
    messages = through_another_local(messages, L1001, "Local/fm1001@followme-0000000a",
                                     ("1796051639.186", "1796051639.187"))
    return through_another_local(messages, L1002, "Local/fm1002@followme-0000000b",
                                 ("1796051639.188", "1796051639.189"))


def test_a_follow_me_chain_is_an_attempt_of_the_phone_at_its_end() -> None:
    messages = follow_me(r01())
    assert sum(m.get("Channel", "").startswith("Local/fm") for m in messages
               if m.get("Event") == "DialBegin") == 2
    record = correlate(messages)
    assert attempts(record) == [("PJSIP/1001", "cancelled"), ("PJSIP/1002", "answered")]
    assert record.agent == "PJSIP/1002" and record.hangup_by == "external"


# -- a Local leg optimised away --------------------------------------------------------


def optimised_away(messages: list[AmiMessage], agent_hangs_up: bool = True
                   ) -> list[AmiMessage]:
    """After 1002 answers, Local/1002@ext-local (as if dialled without /n) optimises
    itself out: PJSIP/1002 moves into the caller's bridge and the Local halves hang up
    (their hangup published before their bridge says they left). Then 1002 hangs up
    first when `agent_hangs_up`."""
    answered = max(i for i, m in enumerate(messages) if m.get("Event") == "BridgeEnter")
    at = f"{float(messages[answered]['Timestamp']) + 0.5:.6f}"
    bridge = next(m for m in messages if m.get("Event") == "LocalBridge"
                  and m["LocalOneChannel"].startswith(L1002))
    phone = next(m for m in messages if m.get("Event") == "BridgeEnter"
                 and m["Channel"] == PHONE2)
    halves = [m for m in messages[answered:] if about(m, L1002)
              and m.get("Event") in ("HangupRequest", "SoftHangupRequest", "Hangup")]
    leaves = [m for m in messages[answered:] if about(m, L1002)
              and m.get("Event") == "BridgeLeave"]
    optimisation = [
        like(bridge, "LocalOptimizationBegin", SourceChannel=PHONE2,
             SourceUniqueid=phone["Uniqueid"], DestUniqueId=OUTER_BRIDGE, Id="7"),
        like(phone, "BridgeLeave", BridgeUniqueid=INNER_BRIDGE),
        like(phone, "BridgeEnter", BridgeUniqueid=OUTER_BRIDGE),
        *halves, *leaves,
        like(bridge, "LocalOptimizationEnd", Success="Yes", Id="7"),
    ]
    optimisation = [{**m, "Timestamp": at} for m in optimisation]
    rest = [m for m in messages[answered + 1:] if not about(m, L1002)]
    if agent_hangs_up:
        trunk_request = next(m for m in rest if m.get("Event") == "HangupRequest")
        phone_events = [m for m in rest if about(m, PHONE2)]
        rest = [like(trunk_request, "HangupRequest", Channel=PHONE2,
                     Uniqueid=phone["Uniqueid"]), *phone_events,
                *(m for m in rest if not about(m, PHONE2) and m is not trunk_request)]
    return messages[:answered + 1] + optimisation + rest


def test_an_optimised_local_leg_leaves_the_phone_in_the_call() -> None:
    messages = optimised_away(r01())
    correlator = Correlator(trace_pbx(R01))
    end = first(messages, "LocalOptimizationEnd")
    for m in messages[:end + 1]:
        assert correlator.feed(m) == []
    assert correlator.busy_interfaces() == {"PJSIP/1002"}
    record = correlate(messages[end + 1:], correlator=correlator)
    assert attempts(record) == [("PJSIP/1001", "cancelled"), ("PJSIP/1002", "answered")]
    assert record.agent == "PJSIP/1002"
    assert record.hangup_by == "agent"  # the Local halves' hangup decided nothing
    assert correlate(optimised_away(r01(), agent_hangs_up=False)).hangup_by == "external"


def test_an_optimised_local_leg_names_the_phone_it_had_reached_unseen() -> None:
    """No inner DialBegin for 1002 (reached by a way AMI does not show): the optimisation
    names the channel that takes the Local leg's place, and that is the answering phone."""
    messages = [m for m in optimised_away(r01(member_status=False))
                if not inner_dial(m, L1002)]
    record = correlate(messages)
    assert attempts(record) == [("PJSIP/1001", "cancelled"), ("PJSIP/1002", "answered")]
    assert record.agent == "PJSIP/1002" and record.outcome == "answered"


# -- a Local member falling to voicemail --------------------------------------------------


def to_voicemail(messages: list[AmiMessage]) -> list[AmiMessage]:
    """1002's phone is not answered: the Local leg's dial to it ends NOANSWER and the Local
    half goes on in `[ext-local]` to `VoiceMail(1002@default,u)`, which answers it; the ring
    group's Dial connects the caller to the mailbox (1001 is cancelled), the caller leaves a
    message and hangs up as in r01."""
    inner_end = next(i for i, m in enumerate(messages) if m.get("Event") == "DialEnd"
                     and m.get("DestChannel") == PHONE2)
    end = messages[inner_end]
    assert end["DialStatus"] == "ANSWER"
    gone = next(m for m in messages if m.get("Event") == "Hangup" and m.get("Channel") == PHONE2)
    dial = next(m for m in messages if m.get("Event") == "Newexten"
                and m.get("Channel") == f"{L1002};2" and m.get("Application") == "Dial")
    at = end["Timestamp"]
    mailbox = [
        like(end, "DialEnd", DialStatus="NOANSWER", DestChannelState="5",
             DestChannelStateDesc="Ringing"),
        {**gone, "ChannelState": "5", "ChannelStateDesc": "Ringing", "Timestamp": at},
        {**like(dial, "Newexten", Application="VoiceMail", AppData="1002@default,u"),
         "Timestamp": at},
    ]
    before = [m for m in messages[:inner_end] if not (
        m.get("Event") == "Newstate" and about(m, PHONE2) and m["ChannelStateDesc"] == "Up")]
    after = [m for m in messages[inner_end + 1:]
             if not about(m, PHONE2) and m.get("BridgeUniqueid") != INNER_BRIDGE]
    return [*before, *mailbox, *after]


def test_a_local_member_falling_to_voicemail_is_missed_to_voicemail() -> None:
    """DESIGN.md: `missed` is an unanswered call that ended without the caller giving up
    first, reason `voicemail` when the call ran VoiceMail; a voicemail greeting is no agent's
    answer. The caller hanging up after the message gave nothing up, wherever the mailbox
    ran: in a Local member of the ring group here, on the caller's own channel in trace 04."""
    record = correlate(to_voicemail(r01()))
    assert attempts(record) == [("PJSIP/1001", "cancelled"), ("PJSIP/1002", "no_answer")]
    assert record.answered_at is None and record.agent is None and record.voicemail
    assert (record.outcome, record.reason) == ("missed", "voicemail")
    on_caller = "04_missed_noanswer_voicemail"
    own = correlate(stamped(trace_messages(on_caller)), trace_pbx(on_caller))
    assert (own.outcome, own.reason, own.voicemail) == (record.outcome, record.reason, True)


# -- the order of attempts through Local members ---------------------------------------


def second_member_dials_first(messages: list[AmiMessage], *, before_its_offer: bool
                              ) -> list[AmiMessage]:
    """The ring group offers Local/1001 then Local/1002 (the caller's DialBegins keep their
    order), but 1002's Local half dials its phone before 1001's half dials its own: right
    after 1002 was offered or, when `before_its_offer`, before either offer was reported.
    1001's inner DialBegin is stamped just after 1002's, as if it came then."""
    inner1 = messages[first(messages, "DialBegin", PHONE1)]
    inner2 = messages[first(messages, "DialBegin", PHONE2)]
    late1 = {**inner1, "Timestamp": f"{float(inner2['Timestamp']) + 0.000001:.6f}"}
    rest = [m for m in messages if m is not inner1 and m is not inner2]
    offered2 = first(rest, "DialBegin", f"{L1002};1") + 1
    if before_its_offer:
        offered1 = first(rest, "DialBegin", f"{L1001};1")
        return [*rest[:offered1], inner2, *rest[offered1:offered2], late1, *rest[offered2:]]
    return [*rest[:offered2], inner2, late1, *rest[offered2:]]


def test_attempts_through_local_members_keep_the_order_the_members_were_offered() -> None:
    """DESIGN.md: the order of attempts is the order in which they were offered; through
    a Local member that is the caller's DialBegin to the member, not the moment the
    member's Local half (running on its own thread) got round to dialling its phone.
    Offer times, ring starts and results stay those of the recorded order; the same
    through a follow-me chain (Local dialling Local dialling the phone)."""
    for chain in (lambda messages: messages, follow_me):
        recorded = correlate(chain(r01()))
        by_phone = {a.interface: a for a in recorded.attempts}
        for before_its_offer in (False, True):
            messages = chain(second_member_dials_first(r01(), before_its_offer=before_its_offer))
            inner = [m["DestChannel"] for m in messages if m.get("Event") == "DialBegin"
                     and m["DestChannel"].startswith("PJSIP/")]
            assert inner == [PHONE2, PHONE1]
            record = correlate(messages)
            assert attempts(record) == [("PJSIP/1001", "cancelled"),
                                        ("PJSIP/1002", "answered")]
            for attempt in record.attempts:
                assert attempt == by_phone[attempt.interface]
            assert (record.ring_started_at, record.ring_seconds, record.rings,
                    record.agent) == (recorded.ring_started_at, recorded.ring_seconds,
                                      recorded.rings, recorded.agent)
