""" "What-if" patches: proposed app changes, applied as monkeypatches to measure their gain.

bench/asgi.py applies the ones named in ``BENCH_PATCHES`` (comma-separated) before
serving; with none named, the app runs exactly as written. They are measurement
tools, not fixes: each docstring says what the real change in the app would be.
"""

from __future__ import annotations


def gc_young(threshold: int) -> None:
    """chatimg/asgi.py freezes the start-up objects and sets the thresholds to
    (700, 20, 100). This sets another young threshold, to weigh the length of
    each young pause against their number (50,000 made 15-35 ms pauses).
    """
    import gc

    _, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, middle, old)


def gc_python_default() -> None:
    """CPython's own thresholds (700, 10, 10) after the app's freeze: full passes
    every 100 young ones instead of 2,000."""
    import gc

    gc.set_threshold(700, 10, 10)


def redis_publish_unlocked() -> None:
    """channels-redis' pub/sub layer holds one lock per Redis shard around every
    PUBLISH, so every delta of every turn of the process waits for the previous
    one's round trip. Proposed: publish without the lock (redis-py's pool gives
    concurrent publishes their own connections; one turn's publishes are
    awaited in order, so its deltas stay ordered).
    """
    from channels_redis.pubsub import RedisSingleShardConnection

    async def publish(self, channel, message):  # type: ignore[no-untyped-def]
        self._ensure_redis()
        await self._redis.publish(channel, message)

    RedisSingleShardConnection.publish = publish


def switch_interval(seconds: float) -> None:
    """The interpreter's GIL switch interval (5 ms by default). While the event
    loop streams, the database thread that starts turns gives up the GIL at every
    SQLite or socket call and then waits up to the interval to get it back: each
    of a turn start's statements pays it. Proposed: a shorter interval in
    chatimg/asgi.py."""
    import sys

    sys.setswitchinterval(seconds)


# The measured proposals that the app has since adopted (the in-memory layer,
# consumer dispatch, lean SSE, delta frames, persistent SQLite, the Redis
# pub/sub layer without a read timeout, gc_tune) were removed from here: see
# docs/benchmarks.md for their before/after figures.
PATCHES = {
    "gc_young_10k": lambda: gc_young(10_000),
    "gc_young_50k": lambda: gc_young(50_000),
    "gc_python_default": gc_python_default,
    "redis_publish_unlocked": redis_publish_unlocked,
    "switch_05ms": lambda: switch_interval(0.0005),
}


def apply(names: str) -> list[str]:
    applied = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        PATCHES[name]()
        applied.append(name)
    return applied
