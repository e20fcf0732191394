"""Rate limits, in one place: sends per user per minute, and frames per socket.

Sends are counted in the cache (Redis in production), so a user's sockets on
every process share one count. The count runs inside the turn-start trip to
the database thread, with the cache's synchronous API: the async one would
make trips of its own.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches

from conversations.protocol import ChatimgError


def now() -> float:
    """The clock of the send windows (a function, so that a test can hold it still)."""
    return time.time()


class RateLimited(ChatimgError):
    def __init__(self, message: str) -> None:
        super().__init__("rate_limited", message)


@functools.cache
def _counters() -> BaseCache:
    """One cache client for the process.

    `django.core.cache.cache` is context-local: every trip to a database
    thread runs in a fresh context, so it built a new Redis client and
    connection pool per send (bench/: 14-19 % of a turn start's CPU and a
    new Redis connection for every send).
    """
    return caches.create_connection("default")


def count_send(user_id: Any) -> None:
    """Count one message (or regenerate, or continue); RateLimited past the limit."""
    at = now()
    window = int(at // 60)
    key = f"ratelimit:send:{user_id}:{window}"
    counters = _counters()
    sent = 1 if counters.add(key, 1, timeout=65) else counters.incr(key)
    if sent > settings.MESSAGES_PER_MINUTE:
        retry_after = 60 - int(at) % 60
        raise RateLimited(
            f"You can send {settings.MESSAGES_PER_MINUTE} messages a minute; "
            f"try again in {retry_after} s."
        )


class FrameWindow:
    """A per-socket flood guard: fixed 10-second windows, in memory."""

    def __init__(self) -> None:
        self.start, self.frames = time.monotonic(), 0

    def count(self) -> None:
        now = time.monotonic()
        if now - self.start >= 10:
            self.start, self.frames = now, 0
        self.frames += 1
        if self.frames > settings.FRAMES_PER_10_SECONDS:
            raise RateLimited("Too many frames; slow down.")
