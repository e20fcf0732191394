""" "What-if" patches: proposed app changes, applied as monkeypatches to measure their gain.

bench/asgi.py applies the ones named in ``BENCH_PATCHES`` (comma-separated) before
serving; with none named, the app runs exactly as written. They are measurement
tools, not fixes: each docstring says what the real change in the app would be.
"""

from __future__ import annotations


def gc_tune() -> None:
    """CPython's cyclic GC walks every tracked object in a full collection; with tens of
    thousands of live tasks, futures and frames that is a pause on the event loop.
    Proposed: in chatimg/asgi.py, ``gc.freeze()`` after start-up and a higher
    generation-0 threshold.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


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
    "gc_tune": gc_tune,
    "redis_publish_unlocked": redis_publish_unlocked,
}


def apply(names: str) -> list[str]:
    applied = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        PATCHES[name]()
        applied.append(name)
    return applied
