"""A steady stream of synthetic calls: Poisson arrivals, kinds by weight.

`generate_mix` is what `callhub simulate --mix`, `callhub run --demo` and the
load benchmarks play: overlapping calls of every recorded kind, on random
outside numbers, DIDs and agents, with ring times kept clear of the
ring-count and short-abandon boundaries so each call's record is certain.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from callhub.sim.calls import CallFactory, SynthCall
from callhub.sim.templates import Template, template_for

DEFAULT_MIX: dict[str, float] = {
    "answered": 40, "answered_agent_hangup": 10, "abandoned": 8, "missed": 5, "busy": 5,
    "hunt": 10, "queue_answered": 10, "queue_abandoned": 4, "queue_rna": 4, "outbound": 4,
    "ringgroup_local": 6, "held": 5,
}
DEMO_NAMES = ("张三", "李四", "王芳", "Müller", "<unknown>", "Zoë", "陈静", "Ahmed")
DEMO_DIDS = ("4008001000", "4008001001", "4008001002", "4008001003")
# The SIP phones of the mix's PJSIP calls (ring groups, held calls) as the simulated PBX
# lists them (PJSIPShowEndpoint's caller ID): callhub names their agents from it.
DEMO_ENDPOINTS = {"1001": '"Li Na" <1001>', "1002": '"Wang Wei" <1002>',
                  "1003": '"Zhang Min" <1003>', "trunk": ""}


@dataclass
class MixSettings:
    """A steady stream of calls: Poisson arrivals at `rate_per_minute`, kinds by weight."""

    rate_per_minute: float = 6.0
    kinds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    ring_range: tuple[float, float] = (1.5, 22.0)
    talk_range: tuple[float, float] = (4.0, 90.0)
    names: Sequence[str] = DEMO_NAMES
    dids: Sequence[str] = DEMO_DIDS
    agents: Sequence[str] | None = None


def agent_pool(tpl: Template) -> list[str]:
    """The configured agent devices shaped like the template's own (`PJSIP/100N`)."""
    if not tpl.interfaces:
        return []
    shape = re.sub(r"\d+", "#", tpl.interfaces[0])
    return [a for a in tpl.config.get("agents", {}) if re.sub(r"\d+", "#", a) == shape]


def _off_boundaries(ring: float, tpl: Template, margin: float = 0.25) -> float:
    """Keep a ring time clear of ring-count and short-abandon boundaries, so the
    record it should produce is not a matter of milliseconds."""
    cadence = float(tpl.config.get("ring_cadence_seconds", 5.0))
    short = float(tpl.config.get("short_abandon_seconds", 5.0))
    pre_ring = (tpl.ring_start - tpl.t0) if tpl.ring_start is not None else 0.0
    for _ in range(8):
        near_cadence = abs(ring - round(ring / cadence) * cadence) < margin
        near_short = abs(pre_ring + ring - short) < margin
        if not (near_cadence or near_short):
            break
        ring += 2 * margin
    return ring


def generate_mix(start: float, settings: MixSettings | None = None, *,
                 seed: int | None = None, pjsip: bool = False,
                 factory: CallFactory | None = None) -> Iterator[SynthCall]:
    """An endless, start-ordered stream of overlapping synthetic calls."""
    settings = settings or MixSettings()
    if settings.rate_per_minute <= 0:
        raise ValueError("rate_per_minute must be > 0")
    for kind in settings.kinds:
        template_for(kind, pjsip)  # fail early on an unknown kind
    rng = random.Random(seed)
    factory = factory or CallFactory(pjsip=pjsip, seed=seed)
    kinds = list(settings.kinds)
    weights = [settings.kinds[k] for k in kinds]
    at = start
    serial = 0
    while True:
        at += rng.expovariate(settings.rate_per_minute / 60.0)
        serial += 1
        kind = rng.choices(kinds, weights)[0]
        tpl = template_for(kind, pjsip)
        pool = list(settings.agents or agent_pool(tpl))
        agent = rng.choice(pool) if pool and tpl.interfaces else None
        yield factory.make(
            kind, at,
            ring_seconds=_off_boundaries(round(rng.uniform(*settings.ring_range), 2), tpl),
            talk_seconds=round(rng.uniform(*settings.talk_range), 2),
            number=f"+86138{rng.randrange(10**8):08d}",
            caller_name=rng.choice(list(settings.names)),
            did=rng.choice(list(settings.dids)),
            agent=agent, template=tpl)
