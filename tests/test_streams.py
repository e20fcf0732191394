"""The answer streams alone: what a dead process had published, rebuilt by offset."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from conversations.streams import FileStreams, RedisStreams, _Writes, rebuild
from tests.servers import free_port
from tests.waiting import eventually

PIECES = [(0, "Héllo\n"), (6, "wörld \\ "), (14, "🙂 tabs\tand\r\nlines")]


def test_rebuild_carries_a_checkpoint_on_and_ignores_overlaps() -> None:
    assert rebuild("Hel", [(0, "He"), (0, "Hello"), (5, " you"), (20, "gap")]) == "Hello you"


async def test_a_file_stream_gives_back_every_piece_exactly(tmp_path: Path) -> None:
    streams = FileStreams(str(tmp_path))
    for offset, text in PIECES:
        await streams.append(7, offset, text)
    assert streams.deltas(7) == PIECES
    assert rebuild("", streams.deltas(7)) == "".join(text for _, text in PIECES)
    await streams.finish(7)
    assert streams.deltas(7) == [] and not list(tmp_path.iterdir())


async def test_more_answers_than_open_files_keep_every_piece_and_leave_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streaming answer's file stays open until its end; past the bound, per delta."""
    monkeypatch.setattr("conversations.streams.OPEN_FILES", 2)
    streams = FileStreams(str(tmp_path))
    descriptors = len(os.listdir("/proc/self/fd"))
    answers = range(20, 25)
    for offset, text in PIECES:
        for answer in answers:  # interleaved, as concurrent answers write
            await streams.append(answer, offset, text)
    for answer in answers:
        assert streams.deltas(answer) == PIECES
    assert len(os.listdir("/proc/self/fd")) == descriptors + 2
    for answer in answers:
        await streams.finish(answer)
    assert len(os.listdir("/proc/self/fd")) == descriptors
    assert not list(tmp_path.iterdir())


async def test_a_line_cut_by_the_crash_is_skipped(tmp_path: Path) -> None:
    streams = FileStreams(str(tmp_path))
    await streams.append(8, 0, "whole")
    with streams.path(8).open("ab") as half:
        half.write(b"5\thalf a li")  # no newline: the write the kill interrupted
    assert streams.deltas(8)[0] == (0, "whole")


REDIS_URL = os.environ.get("REDIS_URL")


@pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (the PostgreSQL + Redis run sets it)")
async def test_a_redis_stream_gives_back_every_piece_and_expires_after_the_end() -> None:
    assert REDIS_URL
    streams = RedisStreams(REDIS_URL, f"chatimg-test-streams-{uuid.uuid4().hex[:8]}")
    for offset, text in PIECES:
        await streams.append(9, offset, text)
    assert streams.deltas(9) == PIECES
    await streams.finish(9)
    ttl = streams.sync.ttl(streams.key(9))
    assert 0 < ttl <= 300
    streams.sync.delete(streams.key(9))


@pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (the PostgreSQL + Redis run sets it)")
async def test_a_redis_stream_whose_end_is_lost_still_expires() -> None:
    """The expiry is set with the answer's start; the deltas after it keep it."""
    assert REDIS_URL
    streams = RedisStreams(REDIS_URL, f"chatimg-test-streams-{uuid.uuid4().hex[:8]}")
    await streams.append_event(11, '{"type":"assistant.started"}', mark="start")
    for offset, text in PIECES:
        await streams.append(11, offset, text)
    assert 0 < streams.sync.ttl(streams.key(11)) <= 86_400
    assert streams.deltas(11) == PIECES
    streams.sync.delete(streams.key(11))


@pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (the PostgreSQL + Redis run sets it)")
async def test_a_reader_on_another_process_gets_text_and_events_in_order_by_position() -> None:
    """What a follower's process reads: entries after a position, events among the text."""
    assert REDIS_URL
    writer = RedisStreams(REDIS_URL, f"chatimg-test-streams-{uuid.uuid4().hex[:8]}")
    reader = RedisStreams(REDIS_URL, writer.prefix)
    assert await reader.tail(10) == "0-0"  # nothing yet: read from the start
    await writer.append_event(10, '{"type":"assistant.started"}', mark="start")
    await writer.append(10, *PIECES[0])
    middle = await reader.tail(10)
    await writer.append(10, *PIECES[1])
    await writer.append_event(10, '{"type":"tool.started"}')
    await writer.append(10, *PIECES[2])
    await writer.append_event(10, '{"type":"assistant.completed"}', mark="end")

    after, entries = await reader.follow(10, "0-0", 100)
    assert entries == [
        {"frame": '{"type":"assistant.started"}', "mark": "start"},
        {"offset": 0, "text": PIECES[0][1]},
        {"offset": 6, "text": PIECES[1][1]},
        {"frame": '{"type":"tool.started"}', "mark": ""},
        {"offset": 14, "text": PIECES[2][1]},
        {"frame": '{"type":"assistant.completed"}', "mark": "end"},
    ]
    assert (await reader.follow(10, middle, 100))[1] == entries[2:]  # from a catch-up's position
    assert await reader.follow(10, after, 100) == (after, [])  # nothing new: waited, then none
    # Recovery and catch-up see the text alone.
    assert writer.deltas(10) == await reader.read_deltas(10) == PIECES
    writer.sync.delete(writer.key(10))


@pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (the PostgreSQL + Redis run sets it)")
async def test_many_answers_writing_at_once_share_round_trips_and_keep_their_order() -> None:
    """Appends queued while a write is out go together; each answer's stay in order."""
    assert REDIS_URL
    streams = RedisStreams(REDIS_URL, f"chatimg-test-streams-{uuid.uuid4().hex[:8]}")
    sent: list[int] = []
    send = streams.writes._send

    async def counted(entries: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        sent.append(len(entries))
        return await send(entries)

    streams.writes._send = counted  # type: ignore[method-assign]

    async def answer(message_id: int) -> None:
        for n in range(20):
            await streams.append(message_id, n * 3, f"{n:02d} ")

    ids = range(100, 150)
    await asyncio.gather(*(answer(i) for i in ids))
    for i in ids:
        assert streams.deltas(i) == [(n * 3, f"{n:02d} ") for n in range(20)]
        streams.sync.delete(streams.key(i))
    assert sum(sent) == 50 * 20
    assert len(sent) < 50 * 20 / 10, f"{len(sent)} round trips for {sum(sent)} appends"


async def test_when_redis_is_away_every_waiting_append_hears_it() -> None:
    streams = RedisStreams(f"redis://127.0.0.1:{free_port()}/0", "chatimg-test-away")
    results = await asyncio.gather(
        *(streams.append(i, 0, "lost") for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(result, redis.ConnectionError) for result in results), results
    # Nothing is left queued or stuck: the next append tries again (and fails again).
    assert not streams.writes.queued and streams.writes.writing is None
    with pytest.raises(redis.ConnectionError):
        await asyncio.wait_for(streams.append(9, 0, "again"), timeout=10)


async def test_a_writer_cancelled_mid_write_leaves_no_append_waiting() -> None:
    """Only when the loop closes is the writer cancelled: then every append it
    held, sent or queued, ends (cancelled) instead of waiting for ever."""
    sending = asyncio.Event()

    class SlowClient:  # a Redis that never answers: the fault is hard to provoke
        async def xadd(self, *args: Any, **kwargs: Any) -> bytes:
            sending.set()
            await asyncio.Event().wait()
            return b"0-1"

    writes = _Writes(SlowClient())
    first = asyncio.create_task(writes.add("k1", {"o": 0, "t": "a"}))
    await asyncio.wait_for(sending.wait(), timeout=5)
    second = asyncio.create_task(writes.add("k2", {"o": 0, "t": "b"}))

    async def queued() -> bool:  # behind the write that is out
        return bool(writes.queued)

    await eventually(queued, timeout=5, what="the second append's queueing")
    assert writes.writing is not None
    writes.writing.cancel()
    done, _ = await asyncio.wait({first, second}, timeout=5)
    assert done == {first, second} and all(task.cancelled() for task in done)
    assert not writes.queued and writes.writing is None
