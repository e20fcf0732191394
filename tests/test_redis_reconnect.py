"""After a Redis restart, the channel layer and the cache work at once.

The channel layer's pool is built with the settings' retry
(chatimg/reconnect.py): the first command on a connection pooled before the
restart reconnects instead of failing (a send refused with internal_error, an
answer's announcement lost). A redis-server of this module's own, restarted by
pid on the same port; no database needed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatimg import reconnect
from chatimg.layers import RedisPubSubChannelLayer
from tests.test_process_death import REDIS_SERVER, Redis
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary")


@pytest.fixture
def redis() -> Iterator[Redis]:
    tmp = Path(tempfile.mkdtemp(prefix="chatimg-reconnect-"))
    server = Redis(tmp)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def restart(redis: Redis) -> None:
    redis.stop()  # by pid: every pooled connection is now dead
    redis.start()  # same port, empty


async def test_the_channel_layer_sends_and_receives_right_after_a_restart(redis: Redis) -> None:
    hosts = [{"address": redis.url, "socket_timeout": None, "retry": reconnect.async_retry()}]
    layer = RedisPubSubChannelLayer(hosts=hosts, prefix="reconnect")
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "before"})
        assert (await layer.receive(channel))["type"] == "before"
        restart(redis)
        # The first PUBLISH on the connection pooled before must not fail.
        await layer.send(channel, {"type": "after"})

        # Pub/sub is at most once: until the subscriber has resubscribed (redis-py's
        # PubSub reconnects on its own), a message is lost; so send until one lands.
        receiving = asyncio.ensure_future(layer.receive(channel))

        async def received() -> bool:
            if not receiving.done():
                await layer.send(channel, {"type": "again"})
            return receiving.done()

        await eventually(received, 30, "the subscriber receiving after the restart")
        assert receiving.result()["type"] in ("after", "again")
    finally:
        await layer.flush()


def test_the_cache_counts_right_after_a_restart(redis: Redis) -> None:
    from django.core.cache.backends.redis import RedisCache

    cache = RedisCache(redis.url, {})  # as chatimg/settings.py configures it
    assert cache.add("sends", 1, timeout=60)
    restart(redis)
    # The send counter (conversations/limits.py) on a connection pooled before.
    assert cache.add("sends", 1, timeout=60)
    assert cache.incr("sends") == 2
