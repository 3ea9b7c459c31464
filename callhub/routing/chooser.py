"""The next-agent choice: who gets a call on a line now, in which order.

The rule: the agents on duty who are active, cleared and not busy, in
rotation order starting after the agent offered the line's previous call;
nobody left, the line's fallback. The position moves as soon as a choice is
made (before the reply goes out), so two calls arriving together start at
different agents. `choose` is synchronous and does no I/O besides the small
rotation-state write, so it answers in well under a millisecond.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from callhub.routing.model import Agent, Line, Rota
from callhub.routing.onduty import DutySlot, on_duty, rota_zone
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


class Router:
    """Chooses agents for calls; holds the rota, the rotation state and the busy view."""

    def __init__(self, rota: RotaStore | Rota, state: RotationState | None = None,
                 busy: Callable[[], Iterable[str]] | None = None,
                 default_timezone: str = "UTC",
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
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
        rota = self.rota
        return on_duty(line, rota.agents, at or self.clock(),
                       rota_zone(rota, self.default_timezone))

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
        if index is None:  # a swap-in or removed agent: the slot it held
            index = previous.index
        return index + 1

    def choose(self, key: str | None, at: datetime | None = None) -> Decision:
        """The decision for a call to `key` (a DID or a line name) at `at` (default now)."""
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
        first = eligible[0]
        self.state.set(line.name, first.agent.id, first.position)
        targets = tuple(s.agent for s in eligible)
        return Decision(line.name, "routed", targets=targets,
                        ring_timeout=line.ring_timeout, fallback=fallback,
                        on_duty=len(takers),
                        ring_timeouts=tuple(line.ring_timeout_for(a) for a in targets))
