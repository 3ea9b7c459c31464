"""Abuse of the AMI reader and the correlator: malformed, mutated and hostile input.

Property-based (hypothesis): whatever bytes arrive, in whatever reads, no
exception escapes, memory stays bounded (the splitter's buffer, the
correlator's open calls once expired or flushed) and bad input is counted
(`MessageSplitter.malformed`, `Correlator.errors`), never silently taken.
Mutations start from the recorded Asterisk traces, so the fuzzing happens
near real input, where bugs live.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from traces_fixtures import all_traces, trace_pbx

from callhub.ami.correlator import FINISHED_MEMORY, Correlator
from callhub.ami.parser import AmiMessage, MessageSplitter, iter_file_messages, parse_message
from callhub.config import PbxConfig
from callhub.records import CallRecord

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BANNER = b"Asterisk Call Manager/11.0.0\r\n"


@lru_cache(maxsize=1)
def recorded() -> tuple[tuple[str, tuple[AmiMessage, ...]], ...]:
    """Every trace's messages (banner and responses included, as the wire had them)."""
    return tuple((t.stem, tuple(iter_file_messages(t))) for t in all_traces())


@lru_cache(maxsize=1)
def pbx() -> PbxConfig:
    return trace_pbx("01_answered_caller_hangup")


def wire(message: AmiMessage) -> bytes:
    return ("".join(f"{k}: {v}\r\n" for k, v in message.items()) + "\r\n").encode()


def feed_all(correlator: Correlator, messages: list[AmiMessage]) -> list[CallRecord]:
    out: list[CallRecord] = []
    for message in messages:
        out.extend(correlator.feed(message))
    return out


def reference_parse(raw: bytes) -> AmiMessage | None:
    """The documented rules, written plainly: lines split at the first ':', one space
    after it dropped, keys non-empty without surrounding whitespace, first value wins,
    and one of Event/Response/Action present; blank input is an empty message."""
    text = raw.decode("utf-8", "replace").strip("\r\n")
    if not text:
        return {}
    message: AmiMessage = {}
    for line in text.split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep or not key or key != key.strip() or "\n" in key:
            return None
        message.setdefault(key, value[1:] if value.startswith(" ") else value)
    if not {"Event", "Response", "Action"} & message.keys():
        return None
    return message


def cut(data: bytes, points: list[int]) -> Iterator[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    for a, b in itertools.pairwise(marks):
        yield data[a:b]


# -- the parser -----------------------------------------------------------------------------

HEADERISH = st.text(alphabet=st.sampled_from(
    [*"EventRspoAcinChalUqd:: \t\r\n\r\n-_=", "张", "ü", "\x00", "\u00a0", "\x1c"]),
    max_size=80)


@given(HEADERISH)
@example("Event : x")
@example("Event: x\r\n Key: y")
@example("Event: x\r\nA:B: c")
@example("Event: x\r\nKey:value")
@example("Event: x\r\n: empty key")
@example("Event: x\r\nEvent")
@example("Event: first\r\nEvent: second")
@example("Action:  two spaces")
@FUZZ
def test_any_text_parses_as_the_documented_rules_say(text: str) -> None:
    raw = text.encode()
    assert parse_message(raw) == reference_parse(raw)


@given(st.binary(max_size=400))
@FUZZ
def test_any_bytes_parse_as_the_documented_rules_say(raw: bytes) -> None:
    assert parse_message(raw) == reference_parse(raw)


@st.composite
def mutated_messages(draw: st.DrawFn) -> tuple[list[bytes], int, int]:
    """Real messages, some mutated into garbage: (blocks, valid count, malformed count)."""
    _, messages = draw(st.sampled_from(recorded()))
    events = [m for m in messages if "Event" in m]
    chosen = draw(st.lists(st.sampled_from(events), min_size=1, max_size=25))
    blocks: list[bytes] = []
    valid = malformed = 0
    for message in chosen:
        kind = draw(st.sampled_from(["keep", "keep", "no_colon", "no_event", "bad_utf8",
                                     "unknown", "space_key", "dup_header"]))
        if kind == "no_colon":  # a header line without its ':'
            key = draw(st.sampled_from(list(message)))
            block = wire(message).replace(f"{key}:".encode(), key.encode(), 1)
        elif kind == "no_event":  # neither Event, Response nor Action
            block = wire({k: v for k, v in message.items() if k != "Event"})
        elif kind == "space_key":
            block = wire(message).replace(b"Event:", b" Event:", 1)
        elif kind == "bad_utf8":  # survives: replaced, not dropped
            block = wire(message).replace(b"\r\n", b"\xff\xfe\xc3\r\n", 1)
        elif kind == "unknown":  # an event type nobody knows: a message like any other
            block = wire({"Event": "FutureThing", **{k: v for k, v in message.items()
                                                     if k != "Event"}})
        elif kind == "dup_header":
            block = wire(message)[:-2] + b"Event: Duplicate\r\n\r\n"
        else:
            block = wire(message)
        # (An event without Event may still be AMI: OriginateResponse carries Response.)
        bad = reference_parse(block[:-4]) is None
        blocks.append(block)
        malformed += bad
        valid += not bad
    return blocks, valid, malformed


@given(mutated_messages(), st.lists(st.integers(min_value=0), max_size=30))
@FUZZ
def test_mutated_real_messages_are_counted_and_the_rest_survive(
        case: tuple[list[bytes], int, int], points: list[int]) -> None:
    blocks, valid, malformed = case
    splitter = MessageSplitter()
    got = [m for chunk in cut(BANNER + b"".join(blocks), points) for m in splitter.feed(chunk)]
    assert len(got) == splitter.messages == valid
    assert splitter.malformed == malformed
    assert got == [m for b in blocks if (m := reference_parse(b[:-4]))]
    assert all(isinstance(v, str) for m in got for v in m.values())


@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=40))
@FUZZ
def test_random_bytes_in_random_reads_never_raise_and_keep_the_buffer_bounded(
        data: bytes, points: list[int]) -> None:
    splitter = MessageSplitter(max_message_bytes=512)
    whole = MessageSplitter(max_message_bytes=1 << 20)
    for chunk in cut(data, points):
        for message in splitter.feed(chunk):
            assert {"Event", "Response", "Action"} & message.keys()
        assert len(splitter._buffer) <= 512
    # Without the size limit in play, how the bytes were cut changes nothing.
    if len(data) < 512:
        again = MessageSplitter()
        assert [m for c in cut(data, points) for m in again.feed(c)] == whole.feed(data)


def test_a_one_megabyte_line_is_dropped_counted_and_the_stream_goes_on() -> None:
    good = wire({"Event": "Newchannel", "CallerIDName": "张三", "Linkedid": "1.1"})
    huge = b"Event: Newchannel\r\nCallerIDName: " + b"x" * (1 << 20) + b"\r\n\r\n"
    for read in (len(huge), 4096, 1000):  # in one read, and in many
        splitter = MessageSplitter()
        splitter.feed(BANNER + good)
        out = []
        for chunk in cut(huge + good, list(range(0, len(huge) + len(good), read))):
            out.extend(splitter.feed(chunk))
            assert len(splitter._buffer) <= splitter.max_message_bytes
        if read == len(huge):
            # A complete message in one read is parsed whatever its size: nothing is held.
            assert len(out) == 2 and out[1]["CallerIDName"] == "张三"
        else:
            assert out == [parse_message(good[:-4])]
            assert splitter.malformed == 1


def test_an_endless_line_without_terminator_does_not_grow_memory() -> None:
    splitter = MessageSplitter(max_message_bytes=64 * 1024)
    splitter.feed(BANNER)
    for _ in range(200):  # 12.8 MB of one unterminated line
        assert splitter.feed(b"y" * 65536) == []
        assert len(splitter._buffer) <= 64 * 1024
    (message,) = splitter.feed(b"\r\n\r\n" + wire({"Event": "Hangup", "Linkedid": "9.9"}))
    assert message["Event"] == "Hangup" and splitter.malformed == 1


# -- the correlator -------------------------------------------------------------------------

@st.composite
def mangled_streams(draw: st.DrawFn) -> list[AmiMessage]:
    """A real trace's events with headers dropped or garbled, events duplicated, dropped,
    reordered, and unknown events and garbage values mixed in."""
    _, messages = draw(st.sampled_from(recorded()))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    out: list[AmiMessage] = []
    # Non-finite and out-of-range numbers are left to the Timestamp test below.
    junk = ["", "\ufffd\ufffd", "-1", "0", "None", "PJSIP/", ";2", "张三" * 50,
            "'; DROP TABLE calls; --", "x" * 5000]
    for message in messages:
        roll = rng.random()
        message = dict(message)
        if roll < 0.05:
            continue  # lost
        if roll < 0.10:
            out.append(dict(message))  # duplicated
        if roll < 0.20 and message:
            del message[rng.choice(list(message))]  # a missing header
        elif roll < 0.30 and message:
            message[rng.choice(list(message))] = rng.choice(junk)  # a garbled value
        elif roll < 0.33:
            message = {"Event": f"Unknown{rng.randrange(9)}", "Linkedid": rng.choice(junk)}
        out.append(message)
    for _ in range(draw(st.integers(0, 8))):  # out of order
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    return out


@given(mangled_streams())
@FUZZ
def test_mangled_real_traces_never_raise_and_every_call_is_recorded_once(
        messages: list[AmiMessage]) -> None:
    correlator = Correlator(pbx(), clock=lambda: 1.7e9, stale_after=3600.0)
    records = feed_all(correlator, messages)
    records += correlator.flush()
    assert correlator.active_calls == 0
    ids = [r.linkedid for r in records]
    assert len(ids) == len(set(ids)), "a call was recorded twice"
    assert all(isinstance(r, CallRecord) and r.to_dict() for r in records)


@pytest.mark.parametrize("stamp", ["nan", "inf", "-inf", "1e309", "1e18"])
def test_a_garbled_timestamp_does_not_poison_the_record(stamp: str) -> None:
    """One bad Timestamp must not make a record that cannot be stored (the writer
    would retry that batch for ever)."""
    _, messages = next(r for r in recorded() if r[0] == "01_answered_caller_hangup")
    events = [dict(m) for m in messages]
    hangups = [m for m in events if m.get("Event") == "Hangup"]
    hangups[-1]["Timestamp"] = stamp
    correlator = Correlator(pbx(), clock=lambda: 1.7e9)
    records = feed_all(correlator, events) + correlator.flush()
    assert records
    for record in records:
        record.to_dict()


def test_events_missing_the_headers_a_handler_needs_are_counted_not_raised() -> None:
    correlator = Correlator(pbx(), clock=lambda: 1.7e9)
    broken = [
        {"Event": "Newchannel", "Linkedid": "1.1", "Channel": "PJSIP/trunk-00000001"},
        {"Event": "Newchannel", "Linkedid": "1.2", "Uniqueid": "1.2"},
    ]
    assert feed_all(correlator, broken) == []
    assert correlator.errors == 2


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_duplicated_trace_events_change_no_record(seed: int) -> None:
    rng = random.Random(seed)
    name, messages = rng.choice(recorded())
    clean = Correlator(trace_pbx(name), stale_after=1e9)
    want = [r.to_dict() for r in feed_all(clean, list(messages)) + clean.flush()]
    doubled: list[AmiMessage] = []
    for message in messages:
        doubled.append(message)
        if message.get("Event") in ("Hangup", "DialEnd", "Newstate", "BridgeEnter",
                                    "HangupRequest", "AgentConnect") and rng.random() < 0.5:
            doubled.append(message)
    again = Correlator(trace_pbx(name), stale_after=1e9)
    got = [r.to_dict() for r in feed_all(again, doubled) + again.flush()]
    assert got == want


def test_calls_that_never_end_are_expired_so_open_calls_stay_bounded() -> None:
    """10,000 calls whose hangups were lost: expire() keeps only the recent ones."""
    clock = [1.7e9]
    correlator = Correlator(pbx(), clock=lambda: clock[0], stale_after=600.0)
    expired = 0
    for n in range(10_000):
        clock[0] += 1.0
        linkedid = f"1700000000.{n}"
        correlator.feed({"Event": "Newchannel", "Channel": f"PJSIP/trunk-{n:08x}",
                         "Uniqueid": linkedid, "Linkedid": linkedid, "Context": "from-pstn",
                         "Exten": "4008001000", "CallerIDNum": "+8613800000000",
                         "Timestamp": f"{clock[0]:.6f}"})
        if n % 100 == 0:
            expired += len(correlator.expire(clock[0]))
        assert correlator.active_calls <= 600 + 100
    expired += len(correlator.expire(clock[0] + 601))
    assert correlator.active_calls == 0 and expired == 10_000


def test_late_events_of_finished_calls_start_no_ghosts_and_memory_is_capped() -> None:
    correlator = Correlator(pbx(), clock=lambda: 1.7e9)
    for n in range(FINISHED_MEMORY * 2):
        linkedid = f"1700000000.{n}"
        channel = f"PJSIP/trunk-{n:08x}"
        start = {"Event": "Newchannel", "Channel": channel, "Uniqueid": linkedid,
                 "Linkedid": linkedid, "Context": "from-pstn", "Exten": "4008001000"}
        hangup = {"Event": "Hangup", "Channel": channel, "Uniqueid": linkedid,
                  "Linkedid": linkedid, "Cause": "16"}
        assert correlator.feed(start) == []
        assert len(correlator.feed(hangup)) == 1
        assert correlator.feed(hangup) == []  # a late duplicate: no second record
    assert correlator.active_calls == 0
    assert len(correlator._finished) <= FINISHED_MEMORY


@given(st.sampled_from(all_traces()), st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_byte_level_damage_to_a_whole_trace_never_raises(path: Path, seed: int) -> None:
    """Flip, drop and insert bytes anywhere in a recorded stream, read it in random reads."""
    rng = random.Random(seed)
    data = bytearray(path.read_bytes())
    for _ in range(rng.randrange(1, 40)):
        at = rng.randrange(len(data))
        action = rng.random()
        if action < 0.4:
            data[at] = rng.randrange(256)
        elif action < 0.7:
            del data[at:at + rng.randrange(1, 50)]
        else:
            data[at:at] = rng.choice([b"\r\n\r\n", b"\xe5", b": ", b"\x00" * 10, b"\r\n"])
    splitter = MessageSplitter(max_message_bytes=4096)
    correlator = Correlator(pbx(), clock=lambda: 1.7e9, stale_after=3600.0)
    records: list[CallRecord] = []
    points = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(60))]
    for chunk in cut(bytes(data), points):
        for message in splitter.feed(chunk):
            records.extend(correlator.feed(message))
        assert len(splitter._buffer) <= 4096
    records.extend(correlator.flush())
    assert correlator.active_calls == 0
    assert len({r.linkedid for r in records}) == len(records)
