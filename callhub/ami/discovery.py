"""What the PBX says about its devices and queues, asked once per login.

Agents need names and Local queue members need the device behind them before
the first call shows either. Rather than configure both by hand, callhub asks:

- `PJSIPShowEndpoints` (then `PJSIPShowEndpoint` per endpoint, whose
  `EndpointDetail` carries the caller ID) and, where chan_sip is loaded,
  `SIPpeers` (then `SIPshowpeer`): a device's name is its caller ID's name
  (`"Li Na" <1001>` names `PJSIP/1001` "Li Na");
- `QueueStatus`: its `QueueMember` events name each member's `StateInterface`.

Every part is optional: a PBX that refuses an action (a module not loaded:
"Invalid/unknown command"; a manager user without the `system` class:
"Permission denied") gives no answer for it, which is logged once and is no
error. `[pbx.agents]` names still win over what is found here.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from callhub.ami.parser import AmiMessage

log = structlog.get_logger(__name__)

Requester = Callable[[dict[str, str], float], Awaitable[Any]]
MAX_DEVICES = 2000  # per technology: the detail of each is one more request
_CALLERID = re.compile(r'^\s*(?:"(?P<quoted>[^"]*)"|(?P<plain>[^<"]*?))\s*(?:<[^>]*>)?\s*$')


@dataclass
class Inventory:
    """Device names by interface (`PJSIP/1001` -> "Li Na") and QueueMember events."""

    names: dict[str, str] = field(default_factory=dict)
    members: list[AmiMessage] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # actions the PBX did not answer


def callerid_name(value: str | None) -> str | None:
    """The name part of a caller ID (`"Li Na" <1001>` -> "Li Na"); None without one."""
    if not value:
        return None
    match = _CALLERID.match(value)
    if match is None:
        return None
    name = (match.group("quoted") or match.group("plain") or "").strip()
    return name or None


async def discover(request: Requester, within: float, pbx: str = "") -> Inventory:
    """Ask the PBX for its endpoints, peers and queue members (see the module doc)."""
    inventory = Inventory()
    endpoints = await _list(request, {"Action": "PJSIPShowEndpoints"}, "EndpointList",
                            within, inventory)
    for endpoint in endpoints[:MAX_DEVICES]:
        name = endpoint.get("ObjectName")
        if not name:
            continue
        callerid = endpoint.get("Callerid")
        if callerid is None:
            details = await _list(request, {"Action": "PJSIPShowEndpoint",
                                            "Endpoint": name}, "EndpointDetail", within,
                                  inventory)
            callerid = next((d.get("Callerid") for d in details), None)
        _name(inventory, f"PJSIP/{name}", callerid)
    peers = await _list(request, {"Action": "SIPpeers"}, "PeerEntry", within, inventory)
    for peer in peers[:MAX_DEVICES]:
        name = peer.get("ObjectName")
        if not name:
            continue
        reply = await request({"Action": "SIPshowpeer", "Peer": name}, within)
        if not isinstance(reply, list) and _success(reply):
            _name(inventory, f"SIP/{name}", _raw(reply).get("Callerid"))
    inventory.members = await _list(request, {"Action": "QueueStatus"}, "QueueMember",
                                    within, inventory)
    log.info("ami.devices_discovered", pbx=pbx, named=len(inventory.names),
             queue_members=len(inventory.members), refused=inventory.refused)
    return inventory


def _name(inventory: Inventory, interface: str, callerid: str | None) -> None:
    name = callerid_name(callerid)
    if name is not None:
        inventory.names[interface] = name


async def _list(request: Requester, action: dict[str, str], event: str, within: float,
                inventory: Inventory) -> list[AmiMessage]:
    """The `event` events of an action's reply list; [] when the PBX refuses it."""
    reply = await request(action, within)
    if not isinstance(reply, list):
        if not _success(reply) and action["Action"] not in inventory.refused:
            inventory.refused.append(action["Action"])
            log.debug("ami.discovery_refused", action=action["Action"],
                      reason=_raw(reply).get("Message", ""))
        return []
    return [_raw(m) for m in reply if _raw(m).get("Event") == event]


def _raw(message: Any) -> AmiMessage:
    raw: AmiMessage = getattr(message, "raw", message)
    return raw


def _success(reply: Any) -> bool:
    return bool(_raw(reply).get("Response", "").lower() == "success")
