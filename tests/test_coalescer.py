"""The streaming seams alone (no database, no channel layer): the coalescer, a follower."""

from __future__ import annotations

import asyncio
import json

from conversations.coalescer import Coalescer


class Recorder:
    def __init__(self) -> None:
        self.deltas: list[tuple[int, str]] = []
        self.changed = asyncio.Event()

    async def __call__(self, offset: int, text: str) -> None:
        self.deltas.append((offset, text))
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.deltas) < count:
                self.changed.clear()
                await self.changed.wait()


def reassembled(deltas: list[tuple[int, str]]) -> str:
    text = ""
    for offset, piece in deltas:
        assert offset == len(text), "a gap or an overlap"
        text += piece
    return text


async def test_the_first_piece_goes_out_at_once_and_the_rest_are_gathered() -> None:
    publish = Recorder()
    stream = Coalescer(0.2, publish)
    stream.add("Hello")
    await publish.wait_for(1)
    for piece in (" wide", " wide", " world"):
        stream.add(piece)
    assert publish.deltas == [(0, "Hello")]  # the rest waits for the window
    await publish.wait_for(2)
    assert publish.deltas == [(0, "Hello"), (5, " wide wide world")]


async def test_settle_publishes_what_is_left_and_leaves_no_timer() -> None:
    publish = Recorder()
    stream = Coalescer(60, publish)
    stream.add("a")
    await publish.wait_for(1)
    stream.add("b")
    stream.add("c")
    await stream.settle()
    assert publish.deltas == [(0, "a"), (1, "bc")]
    assert stream.published == len(stream.text) == 3


async def test_an_event_sent_with_then_follows_the_text_before_it() -> None:
    order: list[str] = []

    async def publish(offset: int, text: str) -> None:
        order.append(f"delta {offset} {text}")

    async def event() -> None:
        order.append("tool.started")

    stream = Coalescer(60, publish)
    stream.add("Let me draw.")
    await stream.then(event)
    assert order == ["delta 0 Let me draw.", "tool.started"]


async def test_a_slow_lead_event_goes_out_before_any_text_while_the_caller_goes_on() -> None:
    """The answer's start is stored while the request to the model goes out: the
    caller is not held up, and no delta overtakes the start."""
    order: list[str] = []
    release = asyncio.Event()

    async def publish(offset: int, text: str) -> None:
        order.append(f"delta {offset} {text}")

    async def started() -> None:
        await release.wait()  # a slow round trip to Redis
        order.append("assistant.started")

    stream = Coalescer(0, publish)
    leading = await stream.lead(started)
    stream.add("Hello")  # the first token comes before the start is out
    flushing = asyncio.create_task(stream.flush())
    done, _ = await asyncio.wait({flushing}, timeout=0.05)
    assert not done and order == [] and not leading.done()  # the caller went on; text waits
    release.set()
    await asyncio.wait_for(asyncio.gather(leading, flushing), 5)
    assert order == ["assistant.started", "delta 0 Hello"]


async def test_a_continued_answer_goes_on_from_the_offset_it_has() -> None:
    publish = Recorder()
    stream = Coalescer(0, publish, text="The tide came ")
    stream.add("in.")
    await stream.settle()
    assert publish.deltas == [(14, "in.")]


async def test_many_pieces_arrive_whole_in_order_under_any_window() -> None:
    publish = Recorder()
    stream = Coalescer(0.001, publish)
    pieces = [f"w{n} " for n in range(500)]
    for piece in pieces:
        stream.add(piece)
        if len(stream.text) % 7 == 0:
            await stream.flush()  # some deltas go out mid-stream
    await stream.settle()
    assert reassembled(publish.deltas) == "".join(pieces)


async def test_a_snapshot_is_what_was_published_not_what_waits() -> None:
    publish = Recorder()
    stream = Coalescer(60, publish)
    stream.add("sent")
    await publish.wait_for(1)
    stream.add(" waiting")
    seen: list[str] = []

    async def send(text: str) -> None:
        seen.append(text)

    await stream.published_text(send)
    assert seen == ["sent"]


# --- a follower: every character once, in order ------------------------------------


def delta_event(offset: int, text: str) -> dict[str, object]:
    return {
        "conversation_id": "c0ffee00-0000-4000-8000-000000000000",
        "message_id": 7,
        "offset": offset,
        "text": text,
    }


def test_a_follower_gets_each_character_once_whatever_overlaps() -> None:
    from conversations.following import Follower

    follower = Follower()
    sent = [
        follower.deliver(delta_event(o, t)).frame
        for o, t in [(0, "Hel"), (0, "Hello"), (3, "lo w"), (2, "llo")]
    ]
    texts = [json.loads(f)["text"] if f else None for f in sent]
    assert texts == ["Hel", "lo", " w", None]
    assert follower.offsets[7] == 7


def test_a_gap_asks_for_one_snapshot_until_it_heals() -> None:
    from conversations.following import Follower

    follower = Follower()
    follower.deliver(delta_event(0, "ab"))
    first, second = follower.deliver(delta_event(5, "xy")), follower.deliver(delta_event(7, "z"))
    assert (first.resync, second.resync) == (True, False)
    healed = follower.deliver(delta_event(0, "abcdexyz"))
    assert json.loads(healed.frame or "{}")["text"] == "cdexyz" and not follower.resyncing
