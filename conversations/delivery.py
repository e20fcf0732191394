"""How a conversation's frames reach the sockets that follow it, on this process and on others.

- Sockets on this process get an answer's frames straight from its turn: a
  call per follower, no channel layer, no Redis round trip (`to_local`).
- Other processes get an answer through its stream (conversations/streams.py),
  which the turn writes anyway so that a crash loses nothing: one reader per
  process and answer with followers there (`read_remote`, XREAD BLOCK by
  position), started by the one notice a turn publishes when it starts, or by a
  catch-up. Nothing per token goes through pub/sub.
- Conversation events outside an answer (a new question, a regeneration, a
  title, a sweep's end) go to this process's followers in-process and to every
  process through the channel-layer group (`publish`), marked with their
  origin so that this process's sockets drop the copy Redis hands back.

A remote reader stops at the answer's last entry, when its process has no
follower of the conversation left, or when the database says the answer ended
(a dead owner's answer closed by a sweep, or an end whose stream write failed):
then it hands its followers the text they lack and the final frame. Sockets
trim what they already hold (by offset) and take one final frame per answer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from typing import Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from conversations import instances, protocol, streams
from conversations.models import Message

log = logging.getLogger(__name__)

#: How long a remote reader waits for an entry before it looks at the database.
IDLE_MS = 2000


class LocalFollower(Protocol):
    async def local_frame(self, event: dict[str, Any]) -> None: ...


class _Local:
    def __init__(self) -> None:
        self.followers: dict[uuid.UUID, set[LocalFollower]] = {}
        self.readers: dict[int, asyncio.Task[None]] = {}


# Per event loop: the server's one, or a test's.
_locals: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Local]
_locals = weakref.WeakKeyDictionary()


def _here() -> _Local:
    loop = asyncio.get_running_loop()
    if loop not in _locals:
        _locals[loop] = _Local()
    return _locals[loop]


def follow(conversation_id: uuid.UUID, follower: LocalFollower) -> None:
    _here().followers.setdefault(conversation_id, set()).add(follower)


def unfollow(conversation_id: uuid.UUID, follower: LocalFollower) -> None:
    followers = _here().followers.get(conversation_id)
    if followers is not None:
        followers.discard(follower)
        if not followers:
            del _here().followers[conversation_id]


def followed_here(conversation_id: uuid.UUID) -> bool:
    return bool(_here().followers.get(conversation_id))


async def to_local(
    conversation_id: uuid.UUID, event: dict[str, Any], skip: LocalFollower | None = None
) -> None:
    """Hand an event to every socket of this process that follows the conversation."""
    for follower in list(_here().followers.get(conversation_id, ())):
        if follower is skip:
            continue
        try:
            await follower.local_frame(event)
        except Exception:  # one broken socket must not stop the answer for the others
            log.exception("delivering to a follower failed")


def delta_event(
    conversation_id: uuid.UUID, message_id: int, offset: int, text: str
) -> dict[str, Any]:
    return {
        "type": "chat.delta",
        "conversation_id": str(conversation_id),
        "message_id": message_id,
        "offset": offset,
        "text": text,
        # Encoded once, not once per follower: most of them need exactly these bytes.
        "frame": protocol.assistant_delta(conversation_id, message_id, offset, text),
    }


def frame_event(
    frame: str, *, starts: int | None = None, ends: int | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "chat.event", "frame": frame}
    if starts is not None:
        event["starts"] = starts  # this answer (re)starts: a continuation ends again
    if ends is not None:
        event["ends"] = ends  # the final frame of this answer: a socket takes one
    return event


async def publish(conversation_id: uuid.UUID, event: dict[str, Any]) -> None:
    """A conversation event for every follower: in-process here, the group for the others."""
    await to_local(conversation_id, event)
    try:
        await get_channel_layer().group_send(
            protocol.group_name(conversation_id), {**event, "origin": instances.INSTANCE}
        )
    except Exception as exc:
        # Redis away. Raising would undo nothing (this process's followers have
        # it) and would stop the caller mid-way: a send whose turn was never
        # launched left its answer "streaming" with a living owner, for ever.
        # The other processes' followers get it by catching up, and an answer's
        # end from the database (their remote reader looks).
        log.warning(
            "conversation %s: publishing to other processes failed: %s", conversation_id, exc
        )


async def announce(conversation_id: uuid.UUID, message_id: int, notice: str | None = None) -> None:
    """Tell other processes that an answer streams here: their followers read its stream,
    after the `notice` frame if there is one (the question the answer is for)."""
    event: dict[str, Any] = {
        "type": "chat.answer",
        "conversation_id": str(conversation_id),
        "message_id": message_id,
        "origin": instances.INSTANCE,
    }
    if notice is not None:
        event["frame"] = notice
    await get_channel_layer().group_send(protocol.group_name(conversation_id), event)


def read_remote(conversation_id: uuid.UUID, message_id: int, after: str = "0-0") -> None:
    """Follow another process's answer through its stream, once per process (idempotent)."""
    if not isinstance(streams.streams(), streams.RedisStreams):
        return  # one process: every answer is this process's own
    here = _here()
    if message_id in here.readers:
        return
    task = asyncio.get_running_loop().create_task(_read(conversation_id, message_id, after))
    here.readers[message_id] = task
    task.add_done_callback(lambda _: here.readers.pop(message_id, None))


async def _read(conversation_id: uuid.UUID, message_id: int, after: str) -> None:
    stream = streams.streams()
    assert isinstance(stream, streams.RedisStreams)
    while followed_here(conversation_id):
        try:
            after, entries = await stream.follow(message_id, after, IDLE_MS)
        except Exception as exc:  # Redis away: the database still says how it ends
            log.warning("answer %s: reading its stream failed: %s", message_id, exc)
            entries = []
            await asyncio.sleep(IDLE_MS / 1000)
        for entry in entries:
            if "offset" in entry:
                event = delta_event(conversation_id, message_id, entry["offset"], entry["text"])
                await to_local(conversation_id, event)
            else:
                mark = entry["mark"]
                event = frame_event(
                    entry["frame"],
                    starts=message_id if mark == streams.START else None,
                    ends=message_id if mark == streams.END else None,
                )
                await to_local(conversation_id, event)
                if mark == streams.END:
                    return
        if not entries and await _ended(conversation_id, message_id):
            return


async def _ended(conversation_id: uuid.UUID, message_id: int) -> bool:
    """If the answer ended without a last entry in its stream, hand its end to the followers."""
    found, final = await database_sync_to_async(_final)(message_id)
    if final is None:
        return not found  # replaced meanwhile (a regeneration): nothing to hand on
    message, html = final
    await to_local(conversation_id, delta_event(conversation_id, message_id, 0, message.text))
    await to_local(
        conversation_id, frame_event(protocol.final_frame(message, html), ends=message_id)
    )
    return True


def _final(message_id: int) -> tuple[bool, tuple[Message, str] | None]:
    """(whether the answer exists, and its final state and HTML once it ended)."""
    message = (
        Message.objects.prefetch_related("tool_invocations__images__parents")
        .filter(pk=message_id)
        .first()
    )
    if message is None or message.status == Message.Status.STREAMING:
        return message is not None, None
    return True, (message, message.body_html())
