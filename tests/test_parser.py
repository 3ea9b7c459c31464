"""The AMI byte stream splitter: complete messages only, UTF-8 safe, bad input counted."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from callhub.ami.parser import MessageSplitter, parse_message

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
