"""Re-timing: a monotonic map of times through anchor points.

Synthetic calls stretch a recorded call's ring and talk spans between its
anchors (`calls.CallFactory`), and the AGI hunt places recorded attempts at
new times (`hunt.hunt_template`); both map every Timestamp through `piecewise`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable


def piecewise(anchors: list[tuple[float, float]]) -> Callable[[float], float]:
    """Monotonic map through (old, new) anchor points; a shift outside them."""
    points = sorted(anchors)

    def retime(t: float) -> float:
        if t <= points[0][0]:
            return t - points[0][0] + points[0][1]
        for (a, fa), (b, fb) in itertools.pairwise(points):
            if t <= b:
                return fa if b == a else fa + (t - a) * (fb - fa) / (b - a)
        return t - points[-1][0] + points[-1][1]
    return retime
