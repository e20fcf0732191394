"""What one client has of each answer, so that it gets exactly the characters it lacks.

Deltas reach a socket from its answer's turn (or a reader of its stream), from
the stream itself after a resubscribe or a gap, or twice when the two overlap;
an answer's final frame may come from its turn and from a sweep or a reader
that saw it end. The protocol promises each client every character once, in
order, and one end per answer. Pure bookkeeping, no I/O: the consumer sends
what `deliver` returns and reads the stream when it says so.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from conversations import protocol


@dataclass
class Delivery:
    frame: str | None = None  # what to send, if anything
    resync: bool = False  # a gap: read the answer's text so far from its stream


@dataclass
class Follower:
    offsets: dict[int, int] = field(default_factory=dict)  # message_id -> characters held
    resyncing: set[int] = field(default_factory=set)
    ended: set[int] = field(default_factory=set)  # answers whose final frame was sent

    def ends(self, message_id: int) -> bool:
        """Whether the final frame of this answer is still to send (then it is taken as sent)."""
        if message_id in self.ended:
            return False
        self.ended.add(message_id)
        return True

    def holds(self, message_id: int, length: int) -> None:
        self.offsets[message_id] = length

    def deliver(self, event: dict[str, Any]) -> Delivery:
        message_id, offset, text = event["message_id"], event["offset"], event["text"]
        have = self.offsets.get(message_id, 0)
        end = offset + len(text)
        if end <= have:
            return Delivery()  # a duplicate (e.g. the snapshot overlapped the live stream)
        if offset > have:
            # A gap (a frame lost on the way): one snapshot request until it heals.
            first = message_id not in self.resyncing
            self.resyncing.add(message_id)
            return Delivery(resync=first)
        self.resyncing.discard(message_id)
        self.offsets[message_id] = end
        if offset == have and "frame" in event:
            return Delivery(event["frame"])  # encoded once by the turn, for most followers
        piece = text[have - offset :]
        return Delivery(protocol.assistant_delta(event["conversation_id"], message_id, have, piece))

    def catch_up(
        self,
        conversation_id: uuid.UUID,
        latest: Any,
        message_id: int | None,
        offset: int,
        html: str,
    ) -> list[str]:
        """The frames that bring a client level with `latest` (a Message, or None).

        The state; for a finished answer, the text the client lacks and the
        final frame. For a streaming one the text comes from its stream, which
        the caller reads.
        """
        if latest is None:
            return [protocol.conversation_state(conversation_id, None, None)]
        have = offset if latest.pk == message_id else 0  # a replaced answer: from the start
        length = len(latest.text)
        self.holds(latest.pk, have)
        sent = [protocol.conversation_state(conversation_id, latest.pk, latest.status, length)]
        if latest.status == "streaming":
            return sent
        if length > have:
            sent.append(
                protocol.assistant_delta(conversation_id, latest.pk, have, latest.text[have:])
            )
        self.holds(latest.pk, length)
        self.ended.add(latest.pk)  # asked for: sent again, but live copies are not
        return [*sent, protocol.final_frame(latest, html)]
