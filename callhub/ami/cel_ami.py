"""AMI `Event: CEL` messages as rows of cel_pgsql's `cel` table.

Asterisk sends every CEL event over AMI too (the recorded traces carry them).
The same events reach PostgreSQL through cel_pgsql with other names and an
`eventtime` in UTC; this turns one into the other, so the CEL interpreter can
be fed either way and tested against the traces.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, tzinfo
from typing import Any

from callhub.ami.correlator import event_time
from callhub.ami.parser import AmiMessage

# AMI header -> cel_pgsql column.
AMI_TO_COLUMN = {
    "EventName": "eventtype",
    "UserDefType": "userdeftype",
    "CallerIDname": "cid_name",
    "CallerIDnum": "cid_num",
    "CallerIDani": "cid_ani",
    "CallerIDrdnis": "cid_rdnis",
    "CallerIDdnid": "cid_dnid",
    "Exten": "exten",
    "Context": "context",
    "Channel": "channame",
    "Application": "appname",
    "AppData": "appdata",
    "AccountCode": "accountcode",
    "PeerAccount": "peeraccount",
    "UniqueID": "uniqueid",
    "LinkedID": "linkedid",
    "Userfield": "userfield",
    "Peer": "peer",
    "Extra": "extra",
}
# cel_pgsql writes the AMA flag as its number.
AMA_FLAGS = {"OMIT": 1, "BILLING": 2, "DOCUMENTATION": 3}


def cel_row(message: AmiMessage, local_zone: tzinfo = UTC) -> dict[str, Any] | None:
    """The `cel` row of one AMI CEL event; None for any other message.

    `eventtime` is a naive UTC datetime, as cel_pgsql with usegmtime=yes stores
    it: from the event's `Timestamp` header (POSIX seconds, microseconds kept),
    else from `EventTime`, which AMI writes in the PBX's local time (`local_zone`).
    """
    if message.get("Event") != "CEL":
        return None
    row: dict[str, Any] = {column: message.get(header, "")
                           for header, column in AMI_TO_COLUMN.items()}
    stamp = event_time(message.get("Timestamp"))
    if stamp is not None:
        moment = datetime.fromtimestamp(stamp, UTC)
    else:
        local = datetime.fromisoformat(message.get("EventTime", "").strip())
        moment = local.replace(tzinfo=local.tzinfo or local_zone).astimezone(UTC)
    row["eventtime"] = moment.replace(tzinfo=None)
    row["amaflags"] = AMA_FLAGS.get(message.get("AMAFlags", ""), 0)
    return row


def cel_rows(messages: Iterable[AmiMessage], local_zone: tzinfo = UTC,
             first_id: int = 1) -> Iterator[dict[str, Any]]:
    """The CEL rows among `messages`, numbered with an `id` in arrival order (as the
    table's serial column numbers them)."""
    next_id = first_id
    for message in messages:
        row = cel_row(message, local_zone)
        if row is not None:
            row["id"] = next_id
            next_id += 1
            yield row
