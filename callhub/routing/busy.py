"""Which agent devices are busy, from what callhub already sees on AMI.

The first source is the calls themselves: a device with a channel up in a
call the correlator has open (`Correlator.busy_interfaces()`: answered, or a
phone dialling out). The second, where the PBX reports it, is the last device
state Asterisk sent (`DeviceStateChange`, or `ExtensionStatus` for a hint);
it is never the only one, since chan_sip without `call-limit` reports every
peer NOT_INUSE, and it is not read for Local channels, whose device state is
INUSE as soon as one exists, ringing or not. A device that is only ringing is
not busy: it can still be offered a call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from callhub.ami.parser import EventFilter

# Asterisk device states (DeviceStateChange `State`) that mean "cannot take a call now".
BUSY_STATES = frozenset({"INUSE", "BUSY", "UNAVAILABLE", "ONHOLD", "RINGINUSE", "INVALID"})
# ExtensionStatus `StatusText` values (Asterisk 13+), and the numeric `Status` bits.
BUSY_STATUS_TEXTS = frozenset({"inuse", "busy", "unavailable", "onhold", "ringinuse",
                               "inuse&ringing", "inuse&hold"})
STATUS_BITS_BUSY = 1 | 2 | 16  # INUSE | BUSY | ONHOLD
STATUS_UNAVAILABLE = 4
STATUS_REMOVED = (-1, -2)


class BusyTracker:
    """Busy devices from AMI device-state events plus the correlators' open calls."""

    def __init__(self, sources: Iterable[Callable[[], Iterable[str]]] = ()) -> None:
        self._sources = list(sources)
        self._states: dict[str, bool] = {}

    def add_source(self, source: Callable[[], Iterable[str]]) -> None:
        """E.g. `tracker.add_source(correlator.busy_interfaces)`."""
        self._sources.append(source)

    # The events `feed` reads: the AMI splitter may skip all others unparsed.
    EVENTS = EventFilter(frozenset({"DeviceStateChange", "ExtensionStatus"}))

    def feed(self, msg: Mapping[str, str]) -> None:
        """Take any AMI message; device-state events update the table, others are ignored."""
        event = msg.get("Event")
        if event == "DeviceStateChange":
            device = msg.get("Device")
            state = (msg.get("State") or "").upper()
            if device and not device.startswith("Local/"):
                self._states[device] = state in BUSY_STATES
        elif event == "ExtensionStatus":
            busy = _extension_busy(msg)
            if busy is None:
                return
            for device in (msg.get("Hint") or "").split("&"):
                device = device.strip()
                if "/" in device and not device.startswith(("Custom:", "Queue:", "Local/")):
                    self._states[device] = busy

    def busy_interfaces(self) -> set[str]:
        busy = {device for device, is_busy in self._states.items() if is_busy}
        for source in self._sources:
            busy.update(source())
        return busy

    def is_busy(self, interface: str) -> bool:
        return interface in self.busy_interfaces()


def _extension_busy(msg: Mapping[str, str]) -> bool | None:
    text = (msg.get("StatusText") or "").strip().lower()
    if text:
        if text in ("idle", "ringing", "notinuse", "not_inuse"):
            return False
        return text in BUSY_STATUS_TEXTS
    try:
        status = int(msg.get("Status", ""))
    except ValueError:
        return None
    if status in STATUS_REMOVED:
        return None
    return bool(status & (STATUS_BITS_BUSY | STATUS_UNAVAILABLE))
