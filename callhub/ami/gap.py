"""Where a PBX's AMI stream stopped: the state file, and the gap it leaves.

A gap is the stretch with no AMI session (callhub stopped, crashed, or the
link was down). To know where one began after a restart, the time of the last
event seen (its `Timestamp`) and the last moment the session was known alive
are kept in a tiny file per PBX under the spool directory, `ami-<pbx>.state`
(mode 0600; rewritten every few seconds while events flow, and at disconnect
and stop; a crash loses at most those few seconds, which only widens the gap).
The last event written is never past the end of a call handed on but not yet
in the spool (`undurable_since`): killed before that call's fsync, callhub
finds it again in the gap, from CEL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from callhub.ami.correlator import MAX_TIMESTAMP
from callhub.lifecycle import Retries

log = structlog.get_logger(__name__)

STATE_EVERY = 5.0  # seconds between two writes of the state file while events flow
# The state file's last event is kept this far before the end of a call a crash would still
# lose (not in the spool yet): cel_pgsql may stamp its rows a moment before AMI's Hangup.
UNDURABLE_MARGIN = 1.0


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch with no AMI session: its calls are read from `last_event` (the last event
    seen, a conservative start) to `until` (the reconnect); `seconds` counts from when the
    session was last known alive. POSIX seconds all."""

    last_event: float
    alive_until: float
    until: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.until - max(self.last_event, self.alive_until))


@dataclass(frozen=True, slots=True)
class StreamState:
    """What the state file holds."""

    last_event: float
    alive_until: float


def state_path(directory: str | Path, pbx: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in pbx)
    return Path(directory) / f"ami-{safe}.state"


def read_state(path: Path) -> StreamState | None:
    """The state a previous run left; None when there is none (or it cannot be read)."""
    try:
        data = json.loads(path.read_text("utf-8"))
        state = StreamState(float(data["last_event"]), float(data["alive_until"]))
        if not all(0.0 <= t < MAX_TIMESTAMP for t in (state.last_event, state.alive_until)):
            # NaN or a time no clock gives: the gap's CEL read would fail on it at every
            # try, and hold up every later gap of the PBX behind it.
            raise ValueError("not a time")
        return state
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        log.warning("ami.state_unreadable", path=str(path), error=type(exc).__name__)
        return None


def write_state(path: Path, state: StreamState, retries: Retries | None = None) -> bool:
    """Replace the state file (no fsync: losing the last write only widens a gap).

    A file that cannot be written (a full disk, a read-only spool directory) is tried
    again at the next save, every few seconds: with the PBX's `retries` it is warned of
    once per distinct error (repeats at debug) and said when it is writable again."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"last_event": state.last_event, "alive_until": state.alive_until}, out)
        os.replace(tmp, path)
    except OSError as exc:
        kind = f"{type(exc).__name__}({exc.errno})"  # its message names the temporary file
        news = retries.failed(kind) if retries is not None else True
        say = log.warning if news else log.debug
        say("ami.state_unwritable", path=str(path), error=kind,
            tries=retries.tries if retries is not None else 1)
        return False
    if retries is not None and (tries := retries.succeeded()):
        log.info("ami.state_writable", path=str(path), failed_tries=tries)
    return True
