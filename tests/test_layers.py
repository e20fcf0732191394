"""The channel layers alone, as channels tests its own (tests/test_inmemorychannel.py there)."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from channels.exceptions import ChannelFull

from chatimg.layers import FastInMemoryChannelLayer, RedisPubSubChannelLayer
from tests.waiting import eventually


async def test_send_and_receive_on_a_channel_in_order() -> None:
    layer = FastInMemoryChannelLayer()
    channel = await layer.new_channel()
    for n in range(3):
        await layer.send(channel, {"type": "x", "n": n})
    assert [(await layer.receive(channel))["n"] for _ in range(3)] == [0, 1, 2]


async def test_a_group_message_reaches_each_member_once_and_a_full_one_misses_it() -> None:
    layer = FastInMemoryChannelLayer(capacity=1)
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g", a)
    await layer.group_add("g", b)
    await layer.send(b, {"type": "filler"})  # b is now full
    await layer.group_send("g", {"type": "hello"})
    assert (await layer.receive(a))["type"] == "hello"
    assert (await layer.receive(b))["type"] == "filler"  # it missed "hello", as channels does
    await layer.send(a, {"type": "one"})
    with pytest.raises(ChannelFull):
        await layer.send(a, {"type": "two"})


async def test_a_receiver_that_goes_away_leaves_no_queue_behind() -> None:
    layer = FastInMemoryChannelLayer()
    channel = await layer.new_channel()
    waiting = asyncio.ensure_future(layer.receive(channel))

    async def is_waiting() -> bool:
        return channel in layer.channels

    await eventually(is_waiting)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert channel not in layer.channels


async def test_messages_are_copies_not_the_senders_dict() -> None:
    layer = FastInMemoryChannelLayer()
    channel = await layer.new_channel()
    message = {"type": "x", "text": "a"}
    await layer.send(channel, message)
    message["text"] = "changed"
    assert (await layer.receive(channel))["text"] == "a"


REDIS_URL = os.environ.get("REDIS_URL")


@pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (the PostgreSQL + Redis run sets it)")
async def test_on_redis_a_group_message_reaches_members_on_two_layers_in_order() -> None:
    prefix = f"chatimg-test-layer-{uuid.uuid4().hex[:8]}"
    config = {"hosts": [{"address": REDIS_URL, "socket_timeout": None}], "prefix": prefix}
    one, two = RedisPubSubChannelLayer(**config), RedisPubSubChannelLayer(**config)
    try:
        a, b = await one.new_channel(), await two.new_channel()
        await one.group_add("g", a)
        await two.group_add("g", b)
        for n in range(20):
            await one.group_send("g", {"type": "d", "n": n})
        for layer, channel in ((one, a), (two, b)):
            got = [(await asyncio.wait_for(layer.receive(channel), 5))["n"] for _ in range(20)]
            assert got == list(range(20))
    finally:
        await one.flush()
        await two.flush()
