"""The channel layers, made to scale with sockets: in memory (the laptop
defaults) and on Redis pub/sub (production); and a consumer base class whose
receive loop keeps up with them.

channels' InMemoryChannelLayer sweeps every channel and group for expired
messages on every send, group_send and receive (O(sockets) per delta), spawns
a task per group member, and builds a new asyncio.Queue on every send (a
`dict.setdefault` default), and drops a channel's queue whenever it is empty,
so that every message built two new queues. Measured in bench/: that made one
process top out below 100 streams. This subclass sweeps at most once a second,
keeps a channel's queue while its consumer receives, and sends without the
extra allocations; behaviour is otherwise the same.

channels-redis' pub/sub layer holds one lock per Redis shard around every
PUBLISH, so each delta of each turn of a process waited for the round trip of
the one before it: in bench/ that doubled the p99 delay at 100 streams. Our
subclass publishes without that lock, a bounded number at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.exceptions import ChannelFull, StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis import pubsub
from channels_redis.utils import _wrap_close, decode_hosts

# PUBLISHes in flight per process and Redis shard: enough to overlap round
# trips, far below redis-py's pool limit (100 connections, then errors).
PUBLISH_CONCURRENCY = 16


class FastInMemoryChannelLayer(InMemoryChannelLayer):
    _next_sweep = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        super()._clean_expired()

    def _queue(self, channel: str) -> asyncio.Queue[tuple[float, dict[str, Any]]]:
        queue: asyncio.Queue[tuple[float, dict[str, Any]]] | None = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        return queue

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        queue = self._queue(channel)
        try:
            # A shallow copy per member, as the values are str and int.
            queue.put_nowait((time.time() + self.expiry, dict(message)))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "Message is not a dict"
        assert self.require_valid_group_name(group), "Group name not valid"
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            # As channels does: a full member misses the message (offsets recover it).
            with contextlib.suppress(ChannelFull):
                await self.send(channel, message)

    async def receive(self, channel: str) -> dict[str, Any]:
        self._clean_expired()
        queue = self._queue(channel)
        try:
            _, message = await queue.get()
        except asyncio.CancelledError:
            # The consumer has gone: forget its queue unless messages wait in it
            # (those expire in the sweep, as with channels).
            if queue.empty():
                self.channels.pop(channel, None)
            raise
        return message


class _Shard(pubsub.RedisSingleShardConnection):
    def __init__(self, host: dict[str, Any], channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._publishing = asyncio.Semaphore(PUBLISH_CONCURRENCY)

    async def publish(self, channel: str, message: bytes) -> None:
        # Order within a turn holds without the shard lock: a turn awaits each
        # of its publishes before it makes the next.
        async with self._publishing:
            self._ensure_redis()
            await self._redis.publish(channel, message)


class _LoopLayer(pubsub.RedisPubSubLoopLayer):
    def __init__(self, hosts: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(hosts, *args, **kwargs)
        self._shards = [_Shard(host, self) for host in decode_hosts(hosts)]


class RedisPubSubChannelLayer(pubsub.RedisPubSubChannelLayer):
    def _get_layer(self) -> _LoopLayer:
        # As channels-redis does, with our loop layer.
        loop = asyncio.get_running_loop()
        layer: _LoopLayer | None = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer


#: The close code of a socket whose server process is shutting down: reconnect.
SERVER_RESTARTING = 4503


class FastDispatchConsumer(AsyncWebsocketConsumer):
    """A websocket consumer with a leaner receive loop and dispatch, for streaming.

    channels' AsyncConsumer.__call__ (await_many_dispatch) makes a new task and
    an asyncio.wait for every message it receives; at thousands of deltas a
    second that was about 8 % of a process's CPU in bench/. Here one pump per
    source (the client, the channel layer) feeds an inbox, and messages are
    still dispatched one at a time, in arrival order. And channels runs
    aclose_old_connections() (a hop to the one ORM thread) before every
    handler: the types in `FAST` never touch the database, so they skip it
    (queueing every delta of every socket behind ORM work was the throughput
    ceiling in bench/).
    """

    FAST: frozenset[str] = frozenset()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.base_send = send
        # Bounded, so a stalled dispatch leaves messages in the layer (whose
        # capacity and offsets deal with a follower that cannot keep up).
        inbox: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue(maxsize=100)

        async def pump(source: Callable[[], Awaitable[dict[str, Any]]]) -> None:
            try:
                while True:
                    await inbox.put(await source())
            except Exception as exc:  # raised below, as channels would
                await inbox.put(exc)

        layer_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        pumps = [asyncio.create_task(pump(receive)), asyncio.create_task(pump(layer_receive))]
        try:
            while True:
                message = await inbox.get()
                if isinstance(message, Exception):
                    raise message
                await self.dispatch(message)
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            # daphne cancels every application instance as it shuts down (SIGTERM),
            # and leaves their sockets open: what a client sent next went nowhere
            # until the process exited. Closed, the client reconnects (to this
            # process while it drains, which refuses new sends in words, or to
            # the next one) and catches up.
            with contextlib.suppress(Exception):
                await self.base_send({"type": "websocket.close", "code": SERVER_RESTARTING})
            raise
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] in self.FAST:
            await getattr(self, message["type"].replace(".", "_"))(message)
            return
        await super().dispatch(message)
