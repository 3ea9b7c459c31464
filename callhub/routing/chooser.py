"""The next-agent choice: who gets a call on a line now, in which order.

The rule: the agents on duty who are active, cleared and not busy, in
rotation order starting after the agent offered the line's previous call;
nobody left, the line's fallback. The position moves as soon as a choice is
made (before the reply goes out), so two calls arriving together start at
different agents. `choose` is synchronous and does no I/O besides the small
rotation-state write, so it answers in well under a millisecond.

With a `shared` position (a pair of instances on one PostgreSQL,
callhub.routing.shared), `choose_shared` lets the database pick the first agent
in one atomic statement, so the pair moves one position per line; when the
database does not answer, the local state decides as `choose` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from callhub.routing.model import Agent, Line, Rota
from callhub.routing.onduty import DutySlot, local_time, on_duty, rota_zone
from callhub.routing.state import RotaStore, RotationState

Result = Literal["routed", "no_agent_on_duty", "no_agent_available", "unknown_line", "error",
                 "malformed"]
RESULTS: tuple[str, ...] = ("routed", "no_agent_on_duty", "no_agent_available",
                            "unknown_line", "error", "malformed")


@dataclass(frozen=True, slots=True)
class Decision:
    """What the dialplan gets: the agents to ring in order, how long each, then what.

    `ring_timeouts[i]` is how long `targets[i]` rings; `ring_timeout` is the line's
    default, for the fallback (and for a target without an entry).
    """

    line: str | None
    result: Result
    targets: tuple[Agent, ...] = ()
    ring_timeout: int = 15
    fallback: str | None = None
    on_duty: int = 0
    ring_timeouts: tuple[int, ...] = ()

    @property
    def interfaces(self) -> tuple[str, ...]:
        return tuple(a.interface for a in self.targets)

    @property
    def target_timeouts(self) -> tuple[int, ...]:
        """One timeout per target, in order (the line's default where none was given)."""
        given = self.ring_timeouts
        return tuple(given[i] if i < len(given) else self.ring_timeout
                     for i in range(len(self.targets)))


class SharedPosition(Protocol):
    """A rotation position shared with another instance (callhub.routing.shared)."""

    async def advance(self, line: Line, eligible: Sequence[DutySlot]) -> DutySlot | None:
        """Move the line's shared position to the next of `eligible` and return it; None
        when the shared position cannot be reached (the caller decides locally)."""
        ...


@dataclass(frozen=True, slots=True)
class Plan:
    """A routable call before the position moves: who may take it, in local order."""

    line: Line
    eligible: list[DutySlot]
    takers: int
    fallback: str | None

    def decision(self, first: DutySlot) -> Decision:
        """Routed, starting at `first` and going round the rotation from there."""
        size = max(len(self.line.rotation), 1)
        ordered = sorted(self.eligible, key=lambda s: (
            s is not first, (s.position - first.position) % size, s.agent.id))
        targets = tuple(s.agent for s in ordered)
        line = self.line
        return Decision(line.name, "routed", targets=targets,
                        ring_timeout=line.ring_timeout, fallback=self.fallback,
                        on_duty=self.takers,
                        ring_timeouts=tuple(line.ring_timeout_for(a) for a in targets))


class Router:
    """Chooses agents for calls; holds the rota, the rotation state and the busy view."""

    def __init__(self, rota: RotaStore | Rota, state: RotationState | None = None,
                 busy: Callable[[], Iterable[str]] | None = None,
                 default_timezone: str = "UTC",
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 shared: SharedPosition | None = None) -> None:
        self.shared = shared
        self._duty: dict[str, tuple[Rota, Line, datetime, tuple[DutySlot, ...]]] = {}
        self._store = rota if isinstance(rota, RotaStore) else None
        self._fixed = rota if isinstance(rota, Rota) else None
        self.state = state or RotationState(None)
        self.busy = busy or (lambda: ())
        self.default_timezone = default_timezone
        self.clock = clock

    @property
    def rota(self) -> Rota:
        if self._store is not None:
            return self._store.rota
        assert self._fixed is not None
        return self._fixed

    def replace_rota(self, rota: Rota) -> None:
        """Make `rota` active (persisted when the router has a store)."""
        if self._store is not None:
            self._store.replace(rota)
        else:
            self._fixed = rota

    def fallback_for(self, line: Line | None) -> str | None:
        if line is not None and line.fallback:
            return line.fallback
        return self.rota.fallback

    def error_decision(self, key: str | None) -> Decision:
        """The answer when something broke: no agents, the fallback. Must not raise."""
        try:
            rota = self.rota
            line = rota.line_for(key)
            return Decision(line=line.name if line else None, result="error",
                            ring_timeout=line.ring_timeout if line else 15,
                            fallback=self.fallback_for(line))
        except Exception:
            return Decision(line=None, result="error")

    def on_duty(self, line: Line, at: datetime | None = None) -> list[DutySlot]:
        """Who is on duty on `line` at `at` (default now). Shifts and exceptions are whole
        minutes, so the answer is kept for the rest of the local minute (per line, for
        this rota object: a loaded or edited rota is a new one)."""
        rota = self.rota
        zone = rota_zone(rota, self.default_timezone)
        minute = local_time(at or self.clock(), zone).replace(second=0, microsecond=0)
        cached = self._duty.get(line.name)
        if cached is not None and cached[0] is rota and cached[1] is line \
                and cached[2] == minute:
            return list(cached[3])
        slots = on_duty(line, rota.agents, minute, zone)
        self._duty[line.name] = (rota, line, minute, tuple(slots))
        return slots

    def order(self, line: Line, at: datetime | None = None,
              busy: Iterable[str] | None = None) -> tuple[list[DutySlot], list[DutySlot]]:
        """(on duty in the order they would be offered the next call, those of them eligible)."""
        slots = self.on_duty(line, at)
        start = self._start_index(line)
        size = max(len(line.rotation), 1)
        slots.sort(key=lambda s: ((s.position - start) % size, s.agent.id))
        busy_set = set(self.busy() if busy is None else busy)
        eligible = [s for s in slots
                    if s.agent.can_take_calls and s.agent.interface not in busy_set]
        return slots, eligible

    def _start_index(self, line: Line) -> int:
        previous = self.state.get(line.name)
        if previous is None:
            return 0
        index = line.rotation_index(previous.agent)
        if index is not None:
            return index + 1
        if previous.agent in line.covers():  # a swap-in: on after the slot it took
            return previous.index + 1
        # An agent since removed from the rotation: those after it moved up one place, so
        # the one that followed it now holds its slot.
        return previous.index

    def plan(self, key: str | None, at: datetime | None = None) -> Plan | Decision:
        """Who may take a call to `key` at `at`, in the order the local position gives; a
        Decision already when nobody can (or the line is unknown)."""
        rota = self.rota
        line = rota.line_for(key)
        if line is None:
            return Decision(line=None, result="unknown_line", fallback=rota.fallback)
        slots, eligible = self.order(line, at)
        takers = [s for s in slots if s.agent.can_take_calls]
        fallback = self.fallback_for(line)
        if not takers:
            return Decision(line.name, "no_agent_on_duty", ring_timeout=line.ring_timeout,
                            fallback=fallback, on_duty=0)
        if not eligible:
            return Decision(line.name, "no_agent_available", ring_timeout=line.ring_timeout,
                            fallback=fallback, on_duty=len(takers))
        return Plan(line, eligible, len(takers), fallback)

    def choose(self, key: str | None, at: datetime | None = None) -> Decision:
        """The decision for a call to `key` (a DID or a line name) at `at` (default now),
        by the local rotation position."""
        plan = self.plan(key, at)
        if isinstance(plan, Decision):
            return plan
        first = plan.eligible[0]
        self.state.set(plan.line.name, first.agent.id, first.position)
        return plan.decision(first)

    async def choose_shared(self, key: str | None, at: datetime | None = None) -> Decision:
        """As `choose`, with the position moved in the shared store when there is one (the
        local state follows it); when that store does not answer, by the local position."""
        if self.shared is None:
            return self.choose(key, at)
        plan = self.plan(key, at)
        if isinstance(plan, Decision):
            return plan
        first = await self.shared.advance(plan.line, plan.eligible)
        if first is None:  # by the local position as it is now, after the wait
            return self.choose(key, at)
        return plan.decision(first)
