"""The AMI read classes callhub needs, found missing from the events a session brings.

Asterisk has no action that tells a session its own permissions, and a manager
user without one of the classes callhub reads (`read = call,agent,dialplan`)
still logs in and is sent the rest. The calls are then stored wrong, silently:
cut to such a user, the real traces give missed calls stored as abandoned and
outbound calls as internal without `dialplan`, calls without their queue
without `agent`, and no call at all without `call`
(tests/test_ami_read_classes.py). Each absence shows in the events:

- `dialplan`: channels made in the session hang up and no Newexten ever came (a
  call's first channel runs dialplan before any of its channels hangs up; only an
  originated channel nobody answers does not);
- `agent`: channels that entered the Queue application (their Newexten) hang up
  and no queue event (QueueCallerJoin, AgentCalled) ever came (a queue that
  refuses callers, `joinempty`, sends none either: the warning says so);
- `call`: dialplan events of several calls (their Linkedid) come and no call event
  ever does (one call looping in an IVR, met by a new session, is one call: a count
  of its Newexten events took it for a missing class).

Counted per session (a `manager reload` changes a user's classes at its next
login); a class found missing stays so until one of its events arrives.
"""

from __future__ import annotations

from callhub.ami.parser import AmiMessage, EventFilter

CALL_EVENTS = frozenset({"Newchannel", "Hangup"})
DIALPLAN_EVENTS = frozenset({"Newexten"})
AGENT_EVENTS = frozenset({"QueueCallerJoin", "AgentCalled"})
CLASS_OF = {**dict.fromkeys(CALL_EVENTS, "call"), **dict.fromkeys(DIALPLAN_EVENTS, "dialplan"),
            **dict.fromkeys(AGENT_EVENTS, "agent")}
WANTS = EventFilter(frozenset(CLASS_OF))
"""The events the watch reads (all of them the correlator parses anyway)."""

MISSING_CLASS_MEANS = {
    "call": "no call event comes: no call is recorded",
    "dialplan": "no dialplan event comes: missed calls are stored as abandoned, outbound "
                "as internal",
    "agent": "calls entered a queue and no queue event came (or every queue refused them: "
             "joinempty): calls are stored without their queue",
}
"""What a missing class does to the calls stored, for the warning."""

HANGUPS_WITHOUT_DIALPLAN = 3  # channels made and hung up with no Newexten in the session
QUEUED_WITHOUT_AGENT = 3  # channels queued and hung up with no queue event in the session
DIALPLAN_WITHOUT_CALLS = 3  # calls (Linkedids) running dialplan, no call event in the session


class ReadClassWatch:
    """Which classes a PBX's AMI user seems to lack, from its sessions' events."""

    def __init__(self) -> None:
        self.missing: set[str] = set()
        self.new_session()

    def new_session(self) -> None:
        """A login: count afresh (what was found missing stays until its events come)."""
        self._seen: set[str] = set()
        self._dialplan_calls: set[str] = set()  # Linkedids of Newexten, until call is seen
        self._made: set[str] = set()  # channels made in this session, not hung up yet
        self._hung_up = 0  # of those, how many hung up
        self._queued: set[str] = set()  # channels that entered the Queue application
        self._queued_hung_up = 0

    def seen(self, event: AmiMessage) -> bool:
        """Take one event of `WANTS`; whether `missing` changed."""
        kind = event.get("Event", "")
        found = CLASS_OF.get(kind)
        if found is None:
            return False
        self._seen.add(found)
        if found == "agent":
            self._queued.clear()
        changed = found in self.missing
        self.missing.discard(found)
        channel = event.get("Channel", "")
        if kind == "Newchannel":
            if "dialplan" not in self._seen:  # else nothing to judge by it
                self._made.add(channel)
        elif kind == "Newexten":
            self._made.clear()
            if event.get("Application") == "Queue" and "agent" not in self._seen:
                self._queued.add(channel)
            if "call" not in self._seen:
                self._dialplan_calls.add(event.get("Linkedid") or channel)
                if len(self._dialplan_calls) >= DIALPLAN_WITHOUT_CALLS:
                    changed |= self._lacks("call")
        elif kind == "Hangup":
            if channel in self._made:
                self._made.discard(channel)
                self._hung_up += 1
                if self._hung_up >= HANGUPS_WITHOUT_DIALPLAN and "dialplan" not in self._seen:
                    changed |= self._lacks("dialplan")
            if channel in self._queued:
                self._queued.discard(channel)
                self._queued_hung_up += 1
                if self._queued_hung_up >= QUEUED_WITHOUT_AGENT and "agent" not in self._seen:
                    changed |= self._lacks("agent")
        return changed

    def _lacks(self, read_class: str) -> bool:
        if read_class in self.missing:
            return False
        self.missing.add(read_class)
        return True
