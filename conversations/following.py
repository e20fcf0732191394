"""What one client has of each answer, so that it gets exactly the characters it lacks.

Deltas reach a socket from the live stream, from a snapshot after a resubscribe,
or twice when the two overlap; the protocol promises each client every
character once, in order. Pure bookkeeping, no I/O: the consumer sends what
`deliver` returns and asks for a snapshot when it says so.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from conversations import protocol


@dataclass
class Delivery:
    frame: str | None = None  # what to send, if anything
    resync: bool = False  # a gap: ask the turn's owner for its text so far


@dataclass
class Follower:
    offsets: dict[int, int] = field(default_factory=dict)  # message_id -> characters held
    resyncing: set[int] = field(default_factory=set)

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
        final frame. For a streaming one the text comes from its turn's
        snapshot, which the caller requests.
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
        return [*sent, protocol.final_frame(latest, html)]
