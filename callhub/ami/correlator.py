"""The call correlator: AMI events in, finished call records out (STUB, being written)."""

from __future__ import annotations

import time
from collections.abc import Callable

from callhub.ami.parser import AmiMessage
from callhub.config import PbxConfig
from callhub.records import CallRecord


class Correlator:
    """Pure state machine: no I/O, clock injected."""

    def __init__(self, pbx: PbxConfig, clock: Callable[[], float] = time.time,
                 stale_after: float = 4 * 3600.0) -> None:
        self.pbx = pbx
        self.clock = clock
        self.stale_after = stale_after

    def feed(self, event: AmiMessage) -> list[CallRecord]:
        """Take one AMI message; return the calls it finished."""
        return []

    def expire(self, now: float | None = None) -> list[CallRecord]:
        """Close calls whose events stopped longer than stale_after ago (incomplete)."""
        return []

    def reconcile(self, channels: list[AmiMessage]) -> list[CallRecord]:
        """After a (re)connect: CoreShowChannel events of the live channels."""
        return []

    def flush(self) -> list[CallRecord]:
        """Close every open call (end of a replay), flagged incomplete."""
        return []

    @property
    def active_calls(self) -> int:
        return 0

    def busy_interfaces(self) -> set[str]:
        """Agent device interfaces that are in a call right now."""
        return set()
