"""An event loop in a thread of its own for the writer's statements.

A batch is a dozen and a half round trips to the database. On the daemon's
event loop each answer waits for its turn behind everything else that became
ready: with 100 PBXs' events arriving every few milliseconds a turn of that
loop took ~10 ms, so a batch of a few hundred calls took ~400 ms, nearly all
of it waiting, and a call's row came up to a second after its end
(bench/fleet.py, bench/README.md). Here the statements' answers are taken
as they come; the Python between them still takes the GIL in turn with the
rest of the process.

Connections belong to the loop they were opened on: the writer's engine is
used only from here (`Database.connect_again`), the daemon's from its own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from callhub.lifecycle import cancel_and_wait
from callhub.loops import new_loop_like

T = TypeVar("T")


class DbLoop:
    """One thread running one event loop until `close`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def _started(self) -> asyncio.AbstractEventLoop:
        """The running loop; a new one when none runs (first use, or a thread that ended:
        a coroutine sent to a loop nobody runs would be waited for forever), of the
        caller's kind (uvloop in the daemon)."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            if self._loop is not None and not self._loop.is_running():
                self._loop.close()
            self._loop = new_loop_like(asyncio.get_running_loop())
            self._thread = threading.Thread(target=self._loop.run_forever, name=self.name,
                                            daemon=True)
            self._thread.start()
        return self._loop

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the thread's loop and wait for it here; cancelling the waiter
        cancels it there (started on first use)."""
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(coro, self._started()))

    async def settle(self) -> None:
        """Cancel what still runs there (a batch whose waiter was cancelled) and wait until
        it has ended."""
        if self._loop is not None:
            await self.run(_cancel_the_rest())

    async def close(self) -> None:
        """Cancel what still runs there, then stop the loop and its thread."""
        await self.settle()
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()


async def _cancel_the_rest() -> None:
    """Cancel every other task of the running loop and wait until they have ended."""
    await cancel_and_wait([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])
