"""Who is on duty on a line at a moment, in offer order: the report `rota show` prints and
GET /api/v1/rotas/{line}/on-duty answers."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from callhub.routing.chooser import Router
from callhub.routing.model import Line
from callhub.routing.onduty import next_change, rota_zone


def line_report(router: Router, line: Line, at: datetime) -> dict[str, Any]:
    """On duty at `at`, in the order the next call would be offered, and why others are not."""
    slots, eligible = router.order(line, at, busy=())
    tz = at.tzinfo
    change = next_change(line, at, rota_zone(router.rota, router.default_timezone),
                         timedelta(days=7))
    previous = router.state.get(line.name)
    order = 0
    agents = []
    for slot in slots:
        a = slot.agent
        takes = slot in eligible
        if takes:
            order += 1
        agents.append({"order": order if takes else None, "id": a.id, "name": a.name,
                       "interface": a.interface, "mobile": a.mobile,
                       "ring_timeout": line.ring_timeout_for(a),
                       "status": "takes calls" if takes else
                       ("inactive" if not a.active else "not cleared (trainee)")})
    return {
        "line": line.name, "dids": list(line.dids),
        "at": at.isoformat(timespec="minutes"), "timezone": str(tz),
        "ring_timeout": line.ring_timeout, "fallback": router.fallback_for(line),
        "previous_agent": previous.agent if previous else None,
        "on_duty": agents,
        "next_change": change.isoformat(timespec="minutes") if change else None,
    }
