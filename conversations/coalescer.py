"""An answer's text as it streams: tokens gathered over a short window, published with offsets.

No database and no channel layer here: the caller passes how to publish, so
this is testable on its own (tests/test_coalescer.py). A delta after a quiet
spell goes out at once (time to first token); within the window, pieces wait
and go out together. Every delta carries the character offset where it starts,
so followers can tell a duplicate from a gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Publish = Callable[[int, str], Awaitable[None]]


class Coalescer:
    def __init__(self, window: float, publish: Publish, text: str = "") -> None:
        self.window = window
        self._publish = publish
        self.text = text  # everything received so far
        self.published = len(text)  # how much of it has gone out
        # Deltas and the events between them go out in order, one at a time.
        self.lock = asyncio.Lock()
        self._last_flush = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None

    def add(self, text: str) -> None:
        self.text += text
        if self._timer is None and self._flushing is None:
            self._schedule()

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last_flush + self.window - loop.time())
        self._timer = loop.call_later(delay, self._start_flush)

    def _start_flush(self) -> None:
        self._timer = None
        self._flushing = asyncio.create_task(self.flush())
        self._flushing.add_done_callback(self._flush_done)

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        self._flushing = None
        if not task.cancelled() and task.exception() is not None:
            log.error("publishing a delta failed: %s", task.exception())
        if self._timer is None and self.published < len(self.text):
            # Text that came while this delta was going out must not wait for
            # the next token, which may be a long time coming (a tool call).
            self._schedule()

    async def flush(self) -> None:
        """Publish whatever has not gone out yet, as one delta."""
        async with self.lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        if self.published >= len(self.text):
            return
        offset, text = self.published, self.text[self.published :]
        self.published = len(self.text)
        self._last_flush = asyncio.get_running_loop().time()
        await self._publish(offset, text)

    async def lead(self, send: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """`send` in a task of its own, ahead of every delta and event handed over
        after this returns (the lock is taken here, and released when it is done),
        so that the caller can go on meanwhile."""
        await self.lock.acquire()

        async def run() -> None:
            try:
                await send()
            finally:
                self.lock.release()

        return asyncio.get_running_loop().create_task(run())

    async def then(self, send: Callable[[], Awaitable[None]]) -> None:
        """Flush, then `send` (an event that must follow the text before it)."""
        async with self.lock:
            await self._flush_locked()
            await send()

    async def published_text(self, send: Callable[[str], Awaitable[None]]) -> None:
        """Hand what has been published so far to `send`, with nothing going out meanwhile."""
        async with self.lock:
            await send(self.text[: self.published])

    async def settle(self) -> None:
        """At the end: no timer left behind, and everything received is published."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.flush()
