"""The aiohttp client session a gateway uses: given by the caller, or its own."""

from __future__ import annotations

import aiohttp

from callhub.sms.message import SendStatus


class SessionHolder:
    """Lazily opens a session (inside the running loop) unless one was given; closes
    only the one it opened."""

    def __init__(self, session: aiohttp.ClientSession | None, timeout_seconds: float) -> None:
        self._session = session
        self._owned = session is None
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owned = True
        return self._session

    async def close(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()
        self._session = None


# The receiver refuses this site (its credentials, its URL), not one message.
UNAVAILABLE_STATUSES = frozenset({401, 403, 404, 407})


def refuses_site(status: int) -> bool:
    """401, 403, 404, 407, and any 3xx: a redirect says the URL moved, wrong for every
    message alike. Gateways post with `allow_redirects=False`: followed, a 301, 302 or
    303 turned the POST into a GET of the new page, whose 200 counted as sent."""
    return status in UNAVAILABLE_STATUSES or 300 <= status < 400


def status_class(status: int) -> SendStatus:
    """'sent' for 2xx; 'retryable' for 408, 425, 429 and 5xx; 'unavailable' for 3xx, 401,
    403, 404 and 407; 'permanent' otherwise."""
    if 200 <= status < 300:
        return "sent"
    if status in (408, 425, 429) or status >= 500:
        return "retryable"
    if refuses_site(status):
        return "unavailable"
    return "permanent"
