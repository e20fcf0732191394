"""The chat websocket: protocol v1 (docs/protocol.md), frames in and out.

Thin by design: it translates frames (checked by frames.py), has the models
do the database work (ownership on every frame, turn starts) and the runtime
run the turns. It never owns a turn: closing the socket leaves the answer
running. Its socket closes when its credentials end (access.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import prefetch_related_objects

from chatimg.layers import FastDispatchConsumer
from conversations import (
    access,
    dbpool,
    delivery,
    frames,
    instances,
    limits,
    protocol,
    rendering,
    runtime,
    streams,
)
from conversations.following import Follower
from conversations.models import Conversation, Message, TurnStart
from conversations.turns import Prompt, TurnContext

log = logging.getLogger(__name__)
R = TypeVar("R")
#: branch.list sends at most this many messages (the latest of the active branch).
BRANCH_LIST_MESSAGES = 100


class ChatConsumer(access.EndsWithAccess, FastDispatchConsumer):
    # Events of a turn never touch the database: no hop to the ORM thread first.
    FAST = frozenset({"chat.delta", "chat.event", "chat.answer"})
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
        self.following: set[uuid.UUID] = set()
        self.follower = Follower()
        self.tasks: set[asyncio.Task[None]] = set()
        # While set, frames from turns wait here (behind this socket's acceptance).
        self.held: list[dict[str, Any]] | None = None
        self.frame_window = limits.FrameWindow()
        # Revocations reach the socket through its user's group (access.py).
        self.credentials = access.Credentials.of(self.scope)
        await self._join(access.user_group(self.user.pk))
        self.start_watching()
        limits_ = {"max_message_chars": settings.MAX_MESSAGE_CHARS}
        await self.send(protocol.session_ready(self.user.get_username(), limits_))

    async def disconnect(self, code: int) -> None:
        self.stop_watching()
        for conversation_id in getattr(self, "following", ()):
            delivery.unfollow(conversation_id, self)
        for task in getattr(self, "tasks", ()):
            task.cancel()
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
        start, prompt = await dbpool.run(self._begin_turn)(frame)
        await self._accept(
            start.conversation,
            start.question,
            start.answer,
            start.created,
            frame.client_message_id,
            prompt=prompt,
        )

    async def _accept(
        self,
        conversation: Conversation,
        question: Message,
        answer: Message,
        created: bool,
        client_message_id: str,
        branch: dict[str, Any] | None = None,
        prompt: Prompt | None = None,
    ) -> None:
        """A stored question (sent or edited): the acceptance first, then its answer."""
        if created:
            await self._follow_own_turn(conversation)
        else:
            await self._follow(conversation)
        self.follower.offsets.setdefault(answer.pk, 0)
        attached = [item.summary() for item in question.attachments.all()]
        created_frame = protocol.message_created(
            conversation.pk, question.pk, client_message_id, question.text, attached, branch
        )
        if created:
            # Other tabs and devices following the conversation see the question
            # too: this process's now, the others' with the answer's announcement.
            event = delivery.frame_event(created_frame)
            await delivery.to_local(conversation.pk, event, skip=self)
            # The turn starts at once; its frames wait until this socket has sent
            # its acceptance (they come in-process, straight from the turn).
            self.held = []
            context = TurnContext(
                conversation.pk, answer.pk, self.user, prompt=prompt, notice=created_frame
            )
            await runtime.launch(context)
        try:
            await self.send(
                protocol.message_accepted(
                    conversation.pk,
                    client_message_id=client_message_id,
                    message_id=question.pk,
                    assistant_message_id=answer.pk,
                    duplicate=not created,
                    title=conversation.title or Conversation.title_from(question.text),
                    url=conversation.get_absolute_url(),
                    attachments=attached,
                    branch=branch,
                )
            )
            if created:
                await self.send(created_frame)  # its own echo, after the acceptance
        finally:
            held, self.held = self.held, None
            for event in held or ():
                await self.local_frame(event)
        if not created:
            await self._catch_up(conversation, answer.pk, offset=0)

    def _begin_turn(self, frame: frames.SendFrame) -> tuple[TurnStart, Prompt | None]:
        """One trip to a database thread: credentials, the rate limit, the turn and
        what its answer asks the model (so the request to the model needs no trip)."""
        self.credentials.verify()  # a revoked credential starts nothing new
        limits.count_send(self.user.pk)
        start = Conversation.objects.start_turn(
            self.user,
            frame.conversation_id,
            frame.client_message_id,
            frame.text,
            list(dict.fromkeys(frame.attachments)),
        )
        if not start.created:
            # Read here, on the database thread: the frames above need them (a
            # question stored just now knows its attachments already).
            prefetch_related_objects([start.question], "attachments")
        return start, Prompt.of(start.history) if start.history is not None else None

    async def on_turn_regenerate(self, frame: frames.ConversationFrame) -> None:
        runtime.refuse_if_draining()
        conversation, (replaced, answer, versions) = await dbpool.run(self._restart)(
            frame, Conversation.begin_regeneration
        )
        await self._follow_own_turn(conversation)
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
        await self._follow_own_turn(conversation)
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
        )(frame, lambda c: self._edit(c, frame))
        branch = protocol.edit_branch(replaced, versions)
        await self._accept(conversation, question, answer, created, frame.client_message_id, branch)

    @staticmethod
    def _edit(
        conversation: Conversation, frame: frames.EditFrame
    ) -> tuple[Message, Message, bool, int, list[int]]:
        edited = conversation.begin_edit(frame.message_id, frame.text, frame.client_message_id)
        prefetch_related_objects([edited[0]], "attachments")  # for the frames, off the loop
        return edited

    async def on_branch_switch(self, frame: frames.SwitchFrame) -> None:
        """Another version: every follower re-renders from where the branches part."""
        switched = await dbpool.run(self._switch)(frame)
        if switched is not None:
            # Owned (_switch checked): follow it, so that this client hears the switch too.
            await self._follow_id(frame.conversation_id)
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
        await self._follow_id(conversation.pk)

    async def _follow_id(self, conversation_id: uuid.UUID) -> None:
        # In-process first: this process's answers come straight from their turns.
        if conversation_id not in self.following:
            delivery.follow(conversation_id, self)
            self.following.add(conversation_id)
        await self._join(protocol.group_name(conversation_id))

    async def _follow_own_turn(self, conversation: Conversation) -> None:
        """Follow the conversation of a turn this socket has just created the answer of.

        The answer exists now, so its turn must launch whatever happens here, or it
        stays "streaming" for ever with a living owner. The group join needs Redis:
        if it fails, this socket still follows in-process (its own turn's frames
        come that way); the join is tried again on the next follow.
        """
        try:
            await self._follow(conversation)
        except Exception as exc:
            log.warning("conversation %s: joining its group failed: %s", conversation.pk, exc)

    async def _join(self, group: str) -> None:
        if group not in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.add(group)

    async def _catch_up(
        self, conversation: Conversation, message_id: int | None, offset: int
    ) -> None:
        """Bring the client level with the conversation's latest answer.

        The conversation is followed first, then the state is read, so nothing
        published in between is missed; offsets make the overlap harmless. A
        streaming answer's text comes from its stream, on any process, without
        asking the process that runs it.
        """
        latest, html = await database_sync_to_async(conversation.catch_up)(message_id)
        for frame in self.follower.catch_up(conversation.pk, latest, message_id, offset, html):
            await self.send(frame)
        if latest is None or latest.status != Message.Status.STREAMING:
            return
        if latest.owner != instances.INSTANCE:
            # What comes next arrives through the stream, from where it is now.
            position = await _stream_tail(latest.pk)
            delivery.read_remote(conversation.pk, latest.pk, position)
        text = await streams.live_text(latest)
        await self.chat_delta(delivery.delta_event(conversation.pk, latest.pk, 0, text))

    async def _resync(self, conversation_id: uuid.UUID, message_id: int) -> None:
        """A gap in what this socket got (a delta lost on the way): fill it from the stream."""
        latest = await Message.objects.filter(pk=message_id).afirst()
        if latest is None:
            return
        text = await streams.live_text(latest)
        await self.chat_delta(delivery.delta_event(conversation_id, message_id, 0, text))

    # --- events from the turn engine ------------------------------------------

    async def local_frame(self, event: dict[str, Any]) -> None:
        """An event from a turn (or a reader of another process's answer) of this process."""
        if self.held is not None:
            self.held.append(event)
            return
        if event["type"] == "chat.delta":
            await self.chat_delta(event)
        else:
            await self._send_event(event)

    async def chat_event(self, event: dict[str, Any]) -> None:
        if event.get("origin") == instances.INSTANCE:
            return  # this process's own: its sockets had it in-process already
        await self._send_event(event)

    async def chat_answer(self, event: dict[str, Any]) -> None:
        """Another process started an answer in a conversation this socket follows."""
        if event["origin"] == instances.INSTANCE:
            return
        if "frame" in event:
            await self.send(event["frame"])  # the question it answers, first
        delivery.read_remote(uuid.UUID(event["conversation_id"]), event["message_id"])

    async def _send_event(self, event: dict[str, Any]) -> None:
        starts = event.get("starts")
        if starts is not None:
            self.follower.ended.discard(starts)  # a continuation: it will end again
        ends = event.get("ends")
        if ends is not None and not self.follower.ends(ends):
            return  # its final frame came already (a sweep and a reader both tell it)
        await self.send(event["frame"])

    async def chat_delta(self, event: dict[str, Any]) -> None:
        delivery_ = self.follower.deliver(event)
        if delivery_.frame is not None:
            await self.send(delivery_.frame)
        elif delivery_.resync:
            task = asyncio.get_running_loop().create_task(
                self._resync(uuid.UUID(event["conversation_id"]), event["message_id"])
            )
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


async def _stream_tail(message_id: int) -> str:
    stream = streams.streams()
    if not isinstance(stream, streams.RedisStreams):
        return "0-0"
    try:
        return await stream.tail(message_id)
    except Exception:  # Redis away: the reader retries, and the database says the end
        return "0-0"
