"""The chat websocket: protocol v1 (docs/protocol.md), frames in and out.

Thin by design: it translates frames (checked by frames.py), has the models
do the database work (ownership on every frame, turn starts) and the runtime
run the turns. It never owns a turn: closing the socket leaves the answer
running. Its socket closes when its credentials end (access.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User

from chatimg.layers import FastDispatchConsumer
from conversations import access, dbpool, frames, limits, protocol, rendering, runtime
from conversations.following import Follower
from conversations.models import Conversation, Message
from conversations.turns import TurnContext

log = logging.getLogger(__name__)
R = TypeVar("R")
#: branch.list sends at most this many messages (the latest of the active branch).
BRANCH_LIST_MESSAGES = 100


class ChatConsumer(access.EndsWithAccess, FastDispatchConsumer):
    # Events of a turn never touch the database: no hop to the ORM thread first.
    FAST = frozenset({"chat.delta", "chat.event"})
    user: User  # set at connect; a socket that is not logged in is closed there

    async def connect(self) -> None:
        self.user = self.scope.get("user")  # type: ignore[assignment]
        # Accept first so the client gets a close code it can act on; closing
        # during the handshake would only show up as an HTTP 403.
        await self.accept()
        if self.user is None or not self.user.is_authenticated:
            await self.end_access("Log in first.")
            return
        self.groups_joined: set[str] = set()
        self.follower = Follower()
        self.frame_window = limits.FrameWindow()
        # Revocations reach the socket through its user's group (access.py).
        self.credentials = access.Credentials.of(self.scope)
        await self._join(access.user_group(self.user.pk))
        self.start_watching()
        limits_ = {"max_message_chars": settings.MAX_MESSAGE_CHARS}
        await self.send(protocol.session_ready(self.user.get_username(), limits_))

    async def disconnect(self, code: int) -> None:
        self.stop_watching()
        for group in getattr(self, "groups_joined", ()):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.access_ended:
            return
        try:
            self.frame_window.count()
            frame = frames.parse(text_data)
            await getattr(self, "on_" + frame.type.replace(".", "_"))(frame)
        except access.AccessEnded as exc:
            await self.end_access(exc.message)
        except protocol.ChatimgError as exc:
            await self.send(protocol.error(exc.code, exc.message, frames.reference(text_data)))
        except Exception:
            # Nothing a client sends may close its socket with 1011: a bug
            # (logged with its traceback) is a typed error, and the socket lives.
            log.exception("frame handler failed")
            message = "Something went wrong on our side."
            await self.send(protocol.error("internal_error", message, frames.reference(text_data)))

    # --- frames from the client ------------------------------------------------

    async def on_message_send(self, frame: frames.SendFrame) -> None:
        runtime.refuse_if_draining()
        conversation, question, answer, created = await dbpool.run(self._begin_turn)(frame)
        await self._follow(conversation)
        self.follower.offsets.setdefault(answer.pk, 0)
        if created:
            # Other tabs and devices following the conversation see the question too.
            await runtime.publish(
                conversation.pk,
                protocol.message_created(
                    conversation.pk, question.pk, frame.client_message_id, frame.text
                ),
            )
            await runtime.launch(TurnContext(conversation.pk, answer.pk, self.user))
        await self.send(
            protocol.message_accepted(
                conversation.pk,
                client_message_id=frame.client_message_id,
                message_id=question.pk,
                assistant_message_id=answer.pk,
                duplicate=not created,
                title=conversation.title or Conversation.title_from(frame.text),
                url=conversation.get_absolute_url(),
            )
        )
        if not created:
            await self._catch_up(conversation, answer.pk, offset=0)

    def _begin_turn(self, frame: frames.SendFrame) -> tuple[Conversation, Message, Message, bool]:
        """One trip to a database thread: credentials, the rate limit, the turn."""
        self.credentials.verify()  # a revoked credential starts nothing new
        limits.count_send(self.user.pk)
        return Conversation.objects.start_turn(
            self.user, frame.conversation_id, frame.client_message_id, frame.text
        )

    async def on_turn_regenerate(self, frame: frames.ConversationFrame) -> None:
        runtime.refuse_if_draining()
        conversation, (replaced, answer, versions) = await dbpool.run(self._restart)(
            frame, Conversation.begin_regeneration
        )
        await self._follow(conversation)
        self.follower.holds(answer.pk, 0)
        # Every follower (other tabs too) swaps the old answer (kept as a version) for the new one.
        replacing = protocol.turn_regenerating(conversation.pk, replaced, answer.pk, versions)
        await runtime.publish(conversation.pk, replacing)
        await runtime.launch(TurnContext(conversation.pk, answer.pk, self.user))

    async def on_turn_continue(self, frame: frames.ConversationFrame) -> None:
        """Carry on an answer that stopped at the model's length limit, in place."""
        runtime.refuse_if_draining()
        conversation, answer = await dbpool.run(self._restart)(
            frame, Conversation.begin_continuation
        )
        await self._follow(conversation)
        self.follower.holds(answer.pk, len(answer.text))
        await runtime.launch(TurnContext(conversation.pk, answer.pk, self.user, continuation=True))

    def _restart(
        self,
        frame: frames.ConversationFrame | frames.EditFrame,
        begin: Callable[[Conversation], R],
    ) -> tuple[Conversation, R]:
        """Regenerate, continue or edit: credentials, ownership, the rate limit, in one trip."""
        self.credentials.verify()
        conversation = Conversation.objects.owned(self.user, frame.conversation_id)
        limits.count_send(self.user.pk)
        return conversation, begin(conversation)

    # --- edit and branch (docs/protocol.md) -----------------------------------------

    async def on_message_edit(self, frame: frames.EditFrame) -> None:
        """A new version of a user message, answered on its own branch."""
        runtime.refuse_if_draining()
        conversation, (question, answer, created, replaced, versions) = await dbpool.run(
            self._restart
        )(frame, lambda c: c.begin_edit(frame.message_id, frame.text, frame.client_message_id))
        await self._follow(conversation)
        self.follower.holds(answer.pk, 0)
        branch = protocol.edit_branch(replaced, versions)
        if created:
            cid, text = frame.client_message_id, frame.text
            await runtime.publish(
                conversation.pk,
                protocol.message_created(conversation.pk, question.pk, cid, text, branch),
            )
            await runtime.launch(TurnContext(conversation.pk, answer.pk, self.user))
        await self.send(
            protocol.message_accepted(
                conversation.pk,
                client_message_id=frame.client_message_id,
                message_id=question.pk,
                assistant_message_id=answer.pk,
                duplicate=not created,
                title=conversation.title or Conversation.title_from(frame.text),
                url=conversation.get_absolute_url(),
                branch=branch,
            )
        )
        if not created:
            await self._catch_up(conversation, answer.pk, offset=0)

    async def on_branch_switch(self, frame: frames.SwitchFrame) -> None:
        """Another version: every follower re-renders from where the branches part."""
        switched = await dbpool.run(self._switch)(frame)
        if switched is not None:
            # Owned (_switch checked): follow it, so that this client hears the switch too.
            await self._join(protocol.group_name(frame.conversation_id))
            await runtime.publish(frame.conversation_id, switched)
        else:  # already the active branch: only this client hears so
            empty = protocol.branch_switched(frame.conversation_id, frame.message_id, None, [], "")
            await self.send(empty)

    def _switch(self, frame: frames.SwitchFrame) -> str | None:
        self.credentials.verify()  # a revoked credential changes nothing
        conversation = Conversation.objects.owned(self.user, frame.conversation_id)
        replaced, messages = conversation.switch_branch(frame.message_id)
        if not messages:
            return None
        return protocol.branch_switched(
            conversation.pk,
            frame.message_id,
            replaced,
            [protocol.branch_message(message) for message in messages],
            rendering.thread_html(messages),
        )

    async def on_branch_list(self, frame: frames.ListFrame) -> None:
        await self.send(await dbpool.run(self._branch)(frame))

    def _branch(self, frame: frames.ListFrame) -> str:
        conversation = Conversation.objects.owned(self.user, frame.conversation_id)
        messages = conversation.active_tail(BRANCH_LIST_MESSAGES)
        listed = [protocol.branch_message(message) for message in messages]
        return protocol.branch_listed(conversation.pk, listed)

    async def on_turn_cancel(self, frame: frames.ConversationFrame) -> None:
        conversation = await self._owned(frame.conversation_id)
        await runtime.request_cancel(conversation.pk)

    async def on_conversation_subscribe(self, frame: frames.SubscribeFrame) -> None:
        conversation = await self._owned(frame.conversation_id)
        await self._follow(conversation)
        await self._catch_up(conversation, frame.message_id, frame.offset)

    async def on_ping(self, frame: frames.PingFrame) -> None:
        await self.send(protocol.pong(frame.id))

    async def _owned(self, conversation_id: uuid.UUID) -> Conversation:
        owned = database_sync_to_async(Conversation.objects.owned)
        conversation: Conversation = await owned(self.user, conversation_id)
        return conversation

    # --- following a conversation ---------------------------------------------

    async def _follow(self, conversation: Conversation) -> None:
        await self._join(protocol.group_name(conversation.pk))

    async def _join(self, group: str) -> None:
        if group not in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.add(group)

    async def _catch_up(
        self, conversation: Conversation, message_id: int | None, offset: int
    ) -> None:
        """Bring the client level with the conversation's latest answer.

        The group is joined first, then the state is read, so nothing published
        in between is missed; offsets make the overlap harmless.
        """
        latest, html = await database_sync_to_async(conversation.catch_up)(message_id)
        for frame in self.follower.catch_up(conversation.pk, latest, message_id, offset, html):
            await self.send(frame)
        if latest is not None and latest.status == Message.Status.STREAMING:
            # The owner of the turn (this process or another) answers with
            # the text published so far; deltas after it arrive through the group.
            await runtime.request_snapshot(conversation.pk, self.channel_name)

    # --- events from the turn engine ------------------------------------------

    async def chat_event(self, event: dict[str, Any]) -> None:
        await self.send(event["frame"])

    async def chat_delta(self, event: dict[str, Any]) -> None:
        delivery = self.follower.deliver(event)
        if delivery.frame is not None:
            await self.send(delivery.frame)
        elif delivery.resync:
            conversation_id = uuid.UUID(event["conversation_id"])
            await runtime.request_snapshot(conversation_id, self.channel_name)
