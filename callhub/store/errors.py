"""What a store change can refuse, in the store's own terms (the API maps them to statuses).

The store knows nothing of HTTP: it says an item is not there, that its state
does not allow the change, or that the change does not apply to it, and
`callhub.api.app` decides what each means to a client.
"""

from __future__ import annotations


class StoreError(ValueError):
    """A change the stored data does not allow; the message says which item and why."""


class NotFound(StoreError):
    """No such item (call, worklist entry, follow-up)."""


class InvalidTransition(StoreError):
    """The item is no longer in a state that allows the change (already handled, closed)."""


class NotApplicable(StoreError):
    """The change makes no sense for this item (a call with no outside number to call back)."""
