"""Each line's own ring target: `[lines."<line>"]` in the config, and what it means for calls.

A front desk answers within 3 rings, a petition office within 5; each line
also has an answer-rate target, the share of its inbound calls to answer
within its ring target. The one rule (`LineTarget.within`) and the one tally
(`tally_rings`) live here so that every figure (the API's stats, the report,
the desk, the metrics) applies a line's target the same way, whether fed
from the calls table or from a rollup of ring counts.

    [lines."front-desk"]
    target_rings = 3              # answered with rings <= 3 is within target (default 3)
    answer_rate_target = 0.9      # share of inbound calls to answer within target_rings

    [lines."*"]                   # every line without a table of its own (optional)
    target_rings = 4

A line is a name `[pbx.lines]` maps DIDs to; a table naming any other line is
refused (a typo would otherwise keep the default target silently). Without
`answer_rate_target`, a line's is `[desk.targets] within_rings_rate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictInt

DEFAULT_TARGET_RINGS = 3
ANY_LINE = "*"  # `[lines."*"]`: the target of every line without a table of its own


class LineTable(BaseModel):
    """One `[lines."<line>"]` table; an unset answer-rate target is the desk's."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    target_rings: Annotated[StrictInt, Field(ge=1, le=100)] = DEFAULT_TARGET_RINGS
    answer_rate_target: Annotated[float, Strict(), Field(ge=0, le=1)] | None = None


@dataclass(frozen=True, slots=True)
class LineTarget:
    """A line's targets: answered within `target_rings` rings, for `answer_rate_target` of
    its inbound calls."""

    target_rings: int = DEFAULT_TARGET_RINGS
    answer_rate_target: float = 0.9

    def within(self, rings: int) -> bool:
        """Whether an answered call that rang `rings` times was answered within target."""
        return rings <= self.target_rings

    def met(self, within_target_rate: float | None) -> bool | None:
        """Whether a within-target rate meets the answer-rate target (None: no calls)."""
        return None if within_target_rate is None else \
            within_target_rate >= self.answer_rate_target


@dataclass(frozen=True, slots=True)
class LineTargets:
    """Every line's target: `lines` those configured, `default` every other line's.

    `known` are the configured line names (listed even when they had no call)."""

    default: LineTarget = LineTarget()
    lines: Mapping[str, LineTarget] = field(default_factory=dict)
    known: tuple[str, ...] = ()

    def of(self, line: str | None) -> LineTarget:
        if line is None:
            return self.default
        return self.lines.get(line, self.default)

    def ring_counts(self) -> tuple[int, ...]:
        """Every target_rings in use, the default's included (sorted)."""
        return tuple(sorted({self.default.target_rings,
                             *(t.target_rings for t in self.lines.values())}))


def line_targets(tables: Mapping[str, LineTable], known: Iterable[str],
                 answer_rate_target: float) -> LineTargets:
    """The targets of the `[lines]` tables; `answer_rate_target` where a table sets none."""
    def target(table: LineTable | None, fallback: LineTarget) -> LineTarget:
        if table is None:
            return fallback
        rate = table.answer_rate_target
        return LineTarget(table.target_rings,
                          fallback.answer_rate_target if rate is None else rate)

    default = target(tables.get(ANY_LINE), LineTarget(DEFAULT_TARGET_RINGS, answer_rate_target))
    configured = {line: target(table, default) for line, table in tables.items()
                  if line != ANY_LINE}
    return LineTargets(default, configured, tuple(dict.fromkeys(known)))


@dataclass(slots=True)
class TargetTally:
    """One line's (or one group's) calls against their lines' targets."""

    inbound: int = 0
    answered: int = 0
    within_target: int = 0

    def add(self, other: TargetTally) -> None:
        self.inbound += other.inbound
        self.answered += other.answered
        self.within_target += other.within_target


def tally_rings(rows: Iterable[tuple[str | None, int | None, int]],
                targets: LineTargets) -> dict[str | None, TargetTally]:
    """Per line, inbound calls, answered ones and those answered within the line's target.

    `rows` are (line, rings of an answered call or None for an unanswered one, how many
    calls): from a GROUP BY over the calls, or from a rollup of ring counts per line.
    """
    out: dict[str | None, TargetTally] = {}
    for line, rings, count in rows:
        tally = out.get(line)
        if tally is None:
            tally = out[line] = TargetTally()
        tally.inbound += count
        if rings is not None:
            tally.answered += count
            if targets.of(line).within(rings):
                tally.within_target += count
    return out
