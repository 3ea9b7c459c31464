"""The AMI byte stream splitter: complete messages only, UTF-8 safe, bad input counted."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from traces_fixtures import all_traces

from callhub.ami.parser import EventFilter, MessageSplitter, iter_messages, parse_message

TRACES = all_traces()

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
NAMED = (
    "Event: Newchannel\r\nChannel: PJSIP/trunk-00000000\r\nCallerIDNum: +8613700000001\r\n"
    "CallerIDName: 张三\r\nLinkedid: 1.0\r\nUniqueid: 1.0\r\n\r\n"
).encode()


def test_a_name_split_inside_a_multibyte_character_survives() -> None:
    cut = NAMED.index("张".encode()) + 1  # inside the first character's three bytes
    splitter = MessageSplitter()
    assert splitter.feed(BANNER + NAMED[:cut]) == []
    (message,) = splitter.feed(NAMED[cut:])
    assert message["CallerIDName"] == "张三"
    assert splitter.banner == "Asterisk Call Manager/11.0.0"


@given(st.lists(st.integers(min_value=1, max_value=len(NAMED) * 3), max_size=12))
@settings(max_examples=200)
def test_any_split_of_the_stream_gives_the_same_messages(cuts: list[int]) -> None:
    data = BANNER + NAMED * 3
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    splitter = MessageSplitter()
    got = [m for a, b in itertools.pairwise(points) for m in splitter.feed(data[a:b])]
    assert [m["CallerIDName"] for m in got] == ["张三"] * 3


def test_malformed_message_is_counted_and_skipped() -> None:
    splitter = MessageSplitter()
    data = BANNER + b"this is not AMI\r\nat all\r\n\r\n" + NAMED
    (message,) = splitter.feed(data)
    assert message["Channel"] == "PJSIP/trunk-00000000"
    assert splitter.malformed == 1 and splitter.messages == 1


def test_an_oversized_message_is_dropped_without_holding_its_bytes() -> None:
    splitter = MessageSplitter(max_message_bytes=4096)
    splitter.feed(BANNER)
    huge = b"Event: X\r\nJunk: " + b"a" * 100_000
    for i in range(0, len(huge), 1000):
        assert splitter.feed(huge[i:i + 1000]) == []
        assert len(splitter._buffer) <= 4096 + 1000
    (message,) = splitter.feed(b"\r\n\r\n" + NAMED)
    assert message["CallerIDName"] == "张三"
    assert splitter.malformed == 1


def test_invalid_utf8_is_replaced_not_dropped() -> None:
    message = parse_message(b"Event: Newchannel\r\nCallerIDName: \xff\xfeabc")
    assert message is not None and message["CallerIDName"].endswith("abc")


def test_values_keep_colons_and_first_repeated_header_wins() -> None:
    message = parse_message(b"Event: VarSet\r\nValue: a: b\r\nValue: second")
    assert message == {"Event": "VarSet", "Value": "a: b"}


def test_stream_without_banner_is_accepted() -> None:
    splitter = MessageSplitter()
    (message,) = splitter.feed(NAMED)
    assert message["Event"] == "Newchannel" and splitter.banner == ""


def _oracle_wants(f: EventFilter, message: dict[str, str]) -> bool:
    """The filter's rule on a parsed message (what the splitter decides from the text)."""
    name = message.get("Event")
    if name is None or "ActionID" in message:
        return True
    if name not in f.events:
        return False
    if name == "VarSet" and f.varset_variables is not None:
        return message.get("Variable") in f.varset_variables
    return True


@given(st.sampled_from(TRACES), st.integers(min_value=1, max_value=9000))
@settings(max_examples=30, deadline=None)
def test_a_filtered_splitter_keeps_exactly_what_the_filter_wants(trace: Path, block: int) -> None:
    """Whatever the reads, the filtered splitter yields the unfiltered messages the filter
    wants, in order, and counts every other event as skipped, never as malformed."""
    wanted = EventFilter(frozenset({"Newchannel", "Hangup", "VarSet", "DialBegin"}),
                         frozenset({"CALLHUB_ROUTE_RESULT"}))
    data = trace.read_bytes()
    chunks = [data[i:i + block] for i in range(0, len(data), block)]
    everything = list(iter_messages(chunks))
    splitter = MessageSplitter(wanted=wanted)
    kept = list(iter_messages(chunks, splitter))
    assert kept == [m for m in everything if _oracle_wants(wanted, m)]
    assert splitter.skipped == len(everything) - len(kept) > 0
    assert splitter.malformed == 0


def test_filters_combine_to_what_either_reader_needs() -> None:
    router = EventFilter(frozenset({"DeviceStateChange"}))
    correlator = EventFilter(frozenset({"Hangup", "VarSet"}), frozenset({"A"}))
    both = router | correlator
    assert both.events == {"DeviceStateChange", "Hangup", "VarSet"}
    assert both.varset_variables == {"A"}
    every = both | EventFilter(frozenset({"VarSet"}))  # a reader of every VarSet
    assert every.varset_variables is None
    assert every.wants("Event: VarSet\r\nVariable: B\r\nValue: 1")
    assert not both.wants("Event: VarSet\r\nVariable: B\r\nValue: 1")
    assert not both.wants("Event: CEL\r\nEventName: CHAN_START")
    assert both.wants("Event: CoreShowChannel\r\nActionID: 7\r\nChannel: x")
    assert both.wants("Response: Success\r\nActionID: 7")
