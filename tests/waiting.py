"""Waiting in tests: for a condition, with a deadline, never for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float = 10, what: str = "the condition"
) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.02)  # the poll's interval, under a deadline


def eventually_sync(
    condition: Callable[[], T],
    timeout: float = 10,
    what: str = "the condition",
    interval: float = 0.02,
) -> T:
    """The same for synchronous code (subprocesses, servers); returns the truthy value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(interval)  # the poll's interval, under a deadline
    return value
