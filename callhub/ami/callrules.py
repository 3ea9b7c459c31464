"""DESIGN.md's call definitions as small pure functions.

Shared by every source of call records (the AMI correlator, the CEL
interpreter) so that a call counts the same rings and gets the same outcome
whichever way it was seen. Nothing here knows about events or rows: callers
pass plain values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from callhub.config import PbxConfig
from callhub.records import AttemptResult, Direction, Outcome

# Hangup causes (Q.850) that say how an unanswered offer ended.
BUSY_CAUSES = frozenset({17})
UNAVAILABLE_CAUSES = frozenset({1, 3, 20, 27, 34, 38})
ANSWERED_ELSEWHERE_CAUSE = 26


def clean(value: str | None) -> str | None:
    """An Asterisk text field with its 'nothing' spellings turned into None."""
    if not value or value == "<unknown>":
        return None
    return value


def start_direction(context: str | None, pbx: PbxConfig) -> Direction:
    """The direction a call's first channel gives it by the context it starts in."""
    if context in pbx.inbound_contexts:
        return "inbound"
    if context in pbx.outbound_contexts:
        return "outbound"
    return "internal"


def rings_for(ring_seconds: float, cadence: float) -> int:
    """Ring bursts started before the answer: 0 when it never rang, else floor(s / cadence) + 1."""
    if ring_seconds <= 0:
        return 0
    return math.floor(ring_seconds / cadence) + 1


def ring_span(offers: Iterable[tuple[float, float | None, float | None]],
              answered_at: float | None, ended_at: float) -> tuple[float | None, float]:
    """(ring_started_at, ring_seconds) of a call from its offers.

    Each offer is (offered_at, ring_started_at, ended_at). Offers made after the
    answer (a transfer's) do not count. Ringing runs from the first offer's ring
    to the answer, or for an unanswered call to the end of its last ringing offer.
    """
    ringing = [(start, end) for offered, start, end in offers
               if start is not None and (answered_at is None or offered <= answered_at)]
    if not ringing:
        return None, 0.0
    started = min(start for start, _ in ringing)
    if answered_at is not None:
        until = answered_at
    else:
        until = max(end if end is not None else ended_at for _, end in ringing)
    return started, max(until - started, 0.0)


def waiting_reason(ringing: bool, offered_or_queued: bool) -> str:
    """Why an abandoned caller was still waiting: a device ringing, a queue, or the IVR."""
    if ringing:
        return "while_ringing"
    if offered_or_queued:
        return "in_queue"
    return "in_ivr"


def unanswered_outcome(direction: Direction, caller_left: str | None, voicemail: bool,
                       no_agent_on_duty: bool,
                       results: Sequence[AttemptResult | None]) -> tuple[Outcome, str | None]:
    """Outcome and reason of a call no agent answered.

    `caller_left` is the waiting reason when the caller gave up first, else None.
    """
    if direction != "inbound":
        return "unanswered", None
    if caller_left is not None:
        return "abandoned", caller_left
    if no_agent_on_duty:
        return "missed", "no_agent_on_duty"
    if voicemail:
        return "missed", "voicemail"
    if not results:
        return "missed", "no_agent_on_duty"
    if all(result in ("busy", "unavailable") for result in results):
        return "missed", "no_agent_available"
    return "missed", "not_answered"
