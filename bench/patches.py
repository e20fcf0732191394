""" "What-if" patches: proposed app changes, applied as monkeypatches to measure their gain.

bench/asgi.py applies the ones named in ``BENCH_PATCHES`` (comma-separated) before
serving; with none named, the app runs exactly as written. They are measurement
tools, not fixes: each docstring says what the real change in the app would be.
"""

from __future__ import annotations


def gc_young(threshold: int) -> None:
    """chatimg/asgi.py freezes the start-up objects and sets a young-generation
    threshold of 50,000; a young collection then walks up to 50,000 objects in
    one pause. This sets another threshold, to weigh pause length against
    frequency.
    """
    import gc

    _, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, middle, old)


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


# The measured proposals that the app has since adopted (the in-memory layer,
# consumer dispatch, lean SSE, delta frames, persistent SQLite, the Redis
# pub/sub layer without a read timeout) were removed from here: see
# docs/benchmarks.md for their before/after figures.
PATCHES = {
    "gc_young_700": lambda: gc_young(700),
    "gc_python_default": lambda: __import__("gc").set_threshold(700, 10, 10),
    "gc_young_5k": lambda: gc_young(5_000),
    "gc_young_10k": lambda: gc_young(10_000),
    "redis_publish_unlocked": redis_publish_unlocked,
}


def apply(names: str) -> list[str]:
    applied = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        PATCHES[name]()
        applied.append(name)
    return applied
