"""Database work of turn starts and ends, on a small pool of threads of its own (PostgreSQL).

Channels runs every `database_sync_to_async` call of the process on ONE
thread: with 200 sends at once, each turn start waited for all the ones
before it (bench/: send → accepted 722 ms p50 on PostgreSQL). Turn starts
and ends run here instead, several at a time, each thread with its own
database connection (PostgreSQL serves them in parallel; SQLite in WAL mode
reads in parallel and takes its write lock in turn). Everything else (page
views, the checkpoints, the sweep) stays on channels' thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar, cast

from channels.db import DatabaseSyncToAsync
from django.conf import settings
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=settings.DB_THREADS, thread_name_prefix="chatimg-db"
            )
        return _executor


def run(func: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """`func` as a coroutine function on the pool (closing stale connections around it).

    On SQLite, on channels' one database thread instead: SQLite has one writer
    at a time, and writers waiting in its busy handler sleep (bench/: 200
    sends at once spent 44 % of their samples there, and started 20 % later
    than from one thread).
    """
    if connections["default"].vendor == "sqlite":
        wrapped = DatabaseSyncToAsync(func)
    else:
        wrapped = DatabaseSyncToAsync(func, thread_sensitive=False, executor=_pool())
    return cast(Callable[P, Coroutine[Any, Any, R]], wrapped)


def close() -> None:
    """Close every pool thread's database connection and the pool (at shutdown, in tests)."""
    global _executor
    with _lock:
        executor, _executor = _executor, None
    if executor is None:
        return
    # One task per thread, each waiting until all threads hold one: every
    # thread closes its own connection (connections are per thread).
    barrier = threading.Barrier(executor._max_workers)

    def close_here() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=5)
        connections.close_all()

    for _ in range(executor._max_workers):
        executor.submit(close_here)
    executor.shutdown(wait=True)
