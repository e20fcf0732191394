"""The chat websocket: protocol v1 (docs/protocol.md).

Thin by design: it authenticates, validates frames, checks ownership on every
frame, and hands the work to the models and the turn engine. It never owns a
turn: closing the socket leaves the answer running.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from conversations import access, frames, limits, protocol, runtime
from conversations.models import (
    Conversation,
    Message,
    NothingToContinue,
    NothingToRegenerate,
    TurnInProgress,
)
from conversations.turns import TurnContext

log = logging.getLogger(__name__)


class ProtocolError(protocol.ChatimgError):
    """A refused frame: the client gets an `error` frame with this code."""


class ChatConsumer(AsyncWebsocketConsumer):
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """channels' AsyncConsumer.__call__ with a leaner receive loop.

        channels' await_many_dispatch makes a new task and an asyncio.wait for
        every message it receives; at thousands of deltas a second that was
        about 8 % of a process's CPU in bench/. Here one pump per source (the
        client, the channel layer) feeds an inbox, and messages are still
        dispatched one at a time, in arrival order.
        """
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
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        # Accept first so the client gets a close code it can act on; closing
        # during the handshake would only show up as an HTTP 403.
        await self.accept()
        if self.user is None or not self.user.is_authenticated:
            await self._send_error("unauthenticated", "Log in first.")
            await self.close(code=4401)
            return
        self.groups_joined: set[str] = set()
        # Revocations reach the socket through its user's group (access.py).
        self.credentials = access.Credentials.of(self.scope)
        self.access_ended = False
        await self._join(access.user_group(self.user.pk))
        self.access_watch = asyncio.create_task(self._watch_access())
        # message_id -> how many characters of it this client has.
        self.offsets: dict[int, int] = {}
        self.resyncing: set[int] = set()
        self.frame_window = limits.FrameWindow()
        await self.send(
            protocol.session_ready(
                self.user.get_username(), {"max_message_chars": settings.MAX_MESSAGE_CHARS}
            )
        )

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "access_watch"):
            self.access_watch.cancel()
        for group in getattr(self, "groups_joined", ()):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.user.is_authenticated or self.access_ended:
            return
        try:
            self.frame_window.count()
            payload = self._parse(text_data, bytes_data)
            handler = self.handlers.get(payload["type"])
            if handler is None:
                raise ProtocolError("unknown_type", f"Unknown frame type {payload['type']!r}.")
            await handler(self, payload)
        except access.AccessEnded as exc:
            await self._end_access(exc.message)
        except protocol.ChatimgError as exc:
            await self._send_error(exc.code, exc.message, ref=self._ref(text_data))
        except Exception:
            # Nothing a client sends may close its socket with 1011: a bug
            # (logged with its traceback) is a typed error, and the socket lives.
            log.exception("frame handler failed")
            await self._send_error(
                "internal_error", "Something went wrong on our side.", ref=self._ref(text_data)
            )

    # --- frames from the client ------------------------------------------------

    def _parse(self, text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
        if text_data is None:
            raise ProtocolError("bad_frame", "Frames must be JSON text.")
        # surrogatepass: measuring must not fail; frames.decode refuses such text.
        if len(text_data.encode("utf-8", "surrogatepass")) > settings.MAX_FRAME_BYTES:
            raise ProtocolError(
                "frame_too_large", f"Frames are limited to {settings.MAX_FRAME_BYTES} bytes."
            )
        try:
            payload = frames.decode(text_data)
        except frames.FrameError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            raise ProtocolError("bad_frame", "A frame is a JSON object with a string 'type'.")
        return payload

    @staticmethod
    def _ref(text_data: str | None) -> str | None:
        """Echo the client's idempotency key in errors so it knows which send failed."""
        try:
            ref = frames.decode(text_data or "").get("client_message_id")
        except (frames.FrameError, AttributeError):
            return None
        return ref if isinstance(ref, str) else None

    @staticmethod
    def _conversation_id(payload: dict[str, Any]) -> uuid.UUID:
        try:
            return uuid.UUID(str(payload.get("conversation_id")))
        except ValueError:
            raise ProtocolError("bad_frame", "conversation_id must be a UUID.") from None

    async def _conversation(self, payload: dict[str, Any]) -> Conversation:
        conversation_id = self._conversation_id(payload)
        return await database_sync_to_async(self._owned)(conversation_id)

    def _owned(self, conversation_id: uuid.UUID) -> Conversation:
        conversation = Conversation.objects.filter(pk=conversation_id, user=self.user).first()
        if conversation is None:
            # Same answer for "does not exist" and "not yours": nothing leaks.
            raise ProtocolError("not_found", "No such conversation.")
        return conversation

    async def on_send(self, payload: dict[str, Any]) -> None:
        text = payload.get("text")
        key = payload.get("client_message_id")
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError("bad_frame", "text must be a non-empty string.")
        if len(text) > settings.MAX_MESSAGE_CHARS:
            raise ProtocolError(
                "message_too_long",
                f"Messages are limited to {settings.MAX_MESSAGE_CHARS} characters.",
            )
        if not isinstance(key, str) or not 1 <= len(key) <= 64:
            raise ProtocolError("bad_frame", "client_message_id must be a string of 1-64 chars.")
        conversation_id = None
        if payload.get("conversation_id") is not None:
            conversation_id = self._conversation_id(payload)
        try:
            conversation, user_message, assistant, created = await database_sync_to_async(
                self._begin_turn
            )(conversation_id, key, text)
        except TurnInProgress:
            raise ProtocolError(
                "turn_in_progress", "Wait for the current answer to finish, or stop it."
            ) from None
        await self._follow(conversation)
        self.offsets.setdefault(assistant.pk, 0)
        if created:
            # Other tabs and devices following the conversation see the question too.
            await runtime.publish(
                conversation.pk,
                protocol.message_created(conversation.pk, user_message.pk, key, text),
            )
            await runtime.launch(TurnContext(conversation.pk, assistant.pk, self.user))
        await self.send(
            protocol.message_accepted(
                conversation.pk,
                client_message_id=key,
                message_id=user_message.pk,
                assistant_message_id=assistant.pk,
                duplicate=not created,
                title=conversation.title or Conversation.title_from(text),
                url=conversation.get_absolute_url(),
            )
        )
        if not created:
            await self._catch_up(conversation, assistant.pk, offset=0)

    def _begin_turn(
        self, conversation_id: uuid.UUID | None, key: str, text: str
    ) -> tuple[Conversation, Message, Message, bool]:
        """Store the question and open its answer, in one trip to the ORM thread.

        A send without a conversation starts one (titled by the message),
        unless it is a resend of such a send. Returns (conversation, question,
        answer, created), as Conversation.begin_turn does.
        """
        self.credentials.verify()  # a revoked credential starts nothing new
        limits.count_send(self.user.pk)
        fresh = False
        if conversation_id is not None:
            conversation = self._owned(conversation_id)
        else:
            earlier = (
                Message.objects.filter(conversation__user=self.user, client_message_id=key)
                .select_related("conversation")
                .first()
            )
            if earlier is not None:
                conversation = earlier.conversation
            else:
                title = Conversation.title_from(text)
                conversation = Conversation.objects.create(user=self.user, title=title)
                fresh = True
        return conversation, *conversation.begin_turn(text, key, touch=not fresh)

    async def on_regenerate(self, payload: dict[str, Any]) -> None:
        conversation_id = self._conversation_id(payload)
        try:
            conversation, replaced, answer = await database_sync_to_async(self._begin_regeneration)(
                conversation_id
            )
        except TurnInProgress:
            raise ProtocolError(
                "turn_in_progress", "Wait for the current answer to finish, or stop it."
            ) from None
        except NothingToRegenerate:
            raise ProtocolError("nothing_to_regenerate", "There is no answer to redo.") from None
        await self._follow(conversation)
        self.offsets[answer.pk] = 0
        # Every follower (other tabs too) swaps the old answer for the new one.
        replacing = protocol.turn_regenerating(conversation.pk, replaced, answer.pk)
        await runtime.publish(conversation.pk, replacing)
        await runtime.launch(TurnContext(conversation.pk, answer.pk, self.user))

    def _begin_regeneration(self, conversation_id: uuid.UUID) -> tuple[Conversation, int, Message]:
        self.credentials.verify()
        conversation = self._owned(conversation_id)
        limits.count_send(self.user.pk)
        return conversation, *conversation.begin_regeneration()

    async def on_continue(self, payload: dict[str, Any]) -> None:
        """Carry on an answer that stopped at the model's length limit, in place."""
        conversation_id = self._conversation_id(payload)
        try:
            conversation, answer = await database_sync_to_async(self._begin_continuation)(
                conversation_id
            )
        except TurnInProgress:
            raise ProtocolError(
                "turn_in_progress", "Wait for the current answer to finish, or stop it."
            ) from None
        except NothingToContinue:
            raise ProtocolError(
                "nothing_to_continue", "The last answer was not cut off; there is nothing to add."
            ) from None
        await self._follow(conversation)
        self.offsets[answer.pk] = len(answer.text)
        await runtime.launch(TurnContext(conversation.pk, answer.pk, self.user, continuation=True))

    def _begin_continuation(self, conversation_id: uuid.UUID) -> tuple[Conversation, Message]:
        conversation = self._owned(conversation_id)
        limits.count_send(self.user.pk)
        return conversation, conversation.begin_continuation()

    async def on_cancel(self, payload: dict[str, Any]) -> None:
        conversation = await self._conversation(payload)
        await runtime.request_cancel(conversation.pk)

    async def on_subscribe(self, payload: dict[str, Any]) -> None:
        conversation = await self._conversation(payload)
        await self._follow(conversation)
        message_id, offset = payload.get("message_id"), payload.get("offset", 0)
        if message_id is not None and not isinstance(message_id, int):
            raise ProtocolError("bad_frame", "message_id must be an integer.")
        if not isinstance(offset, int) or offset < 0:
            raise ProtocolError("bad_frame", "offset must be a non-negative integer.")
        await self._catch_up(conversation, message_id, offset)

    async def on_ping(self, payload: dict[str, Any]) -> None:
        await self.send(protocol.pong(payload.get("id")))

    handlers = {
        "message.send": on_send,
        "turn.cancel": on_cancel,
        "turn.regenerate": on_regenerate,
        "turn.continue": on_continue,
        "conversation.subscribe": on_subscribe,
        "ping": on_ping,
    }

    # --- credentials that end while the socket is open (access.py) ----------

    async def _watch_access(self) -> None:
        """Re-check the credentials now and then: session expiry sends no event."""
        period = settings.ACCESS_RECHECK_SECONDS
        # The first check at a random point of the period spreads a crowd's checks.
        await asyncio.sleep(period * random.uniform(0.5, 1.0))
        while not self.access_ended:
            try:
                await database_sync_to_async(self.credentials.verify)()
            except access.AccessEnded as exc:
                await self._end_access(exc.message)
                return
            except Exception:
                log.exception("could not re-check a socket's credentials")
            await asyncio.sleep(period)

    async def access_revoke(self, event: dict[str, Any]) -> None:
        if self.credentials.matches(event):
            await self._end_access(event.get("message") or access.SESSION_ENDED)

    async def access_recheck(self, event: dict[str, Any]) -> None:
        try:
            await database_sync_to_async(self.credentials.verify)()
        except access.AccessEnded as exc:
            await self._end_access(exc.message)

    async def _end_access(self, message: str) -> None:
        """Tell the client why, then close with 4401 (log in again)."""
        if self.access_ended:
            return
        self.access_ended = True
        await self._send_error("unauthenticated", message)
        await self.close(code=4401)

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
        latest = await database_sync_to_async(self._latest_answer)(conversation, message_id)
        if latest is None:
            await self.send(protocol.conversation_state(conversation.pk, None, None))
            return
        have = offset if latest.pk == message_id else 0
        self.offsets[latest.pk] = have
        await self.send(
            protocol.conversation_state(
                conversation.pk, latest.pk, latest.status, text_length=len(latest.text)
            )
        )
        if latest.status == Message.Status.STREAMING:
            # The owner of the turn (this process or another) answers with
            # the text published so far; deltas after it arrive through the group.
            await runtime.request_snapshot(conversation.pk, self.channel_name)
            return
        if len(latest.text) > have:
            await self.send(
                protocol.assistant_delta(conversation.pk, latest.pk, have, latest.text[have:])
            )
        self.offsets[latest.pk] = len(latest.text)
        html = await database_sync_to_async(latest.body_html)()
        await self.send(protocol.final_frame(latest, html))

    @staticmethod
    def _latest_answer(conversation: Conversation, message_id: int | None) -> Message | None:
        answers = conversation.messages.filter(role=Message.Role.ASSISTANT).prefetch_related(
            "tool_invocations__image"
        )
        latest = answers.order_by("-id").first()
        if message_id is not None and latest is not None and latest.pk != message_id:
            # The client's answer may have been regenerated while it was away:
            # then it gets the one that replaced it, from the start.
            return answers.filter(pk=message_id).first() or latest
        return latest

    # --- events from the turn engine ------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        # channels runs aclose_old_connections() (a hop to the one ORM thread)
        # before every handler; deltas and events never touch the database, and
        # queueing every delta of every socket behind ORM work was the
        # throughput ceiling in bench/.
        if message["type"] in ("chat.delta", "chat.event"):
            handler = self.chat_delta if message["type"] == "chat.delta" else self.chat_event
            await handler(message)
            return
        await super().dispatch(message)

    async def chat_event(self, event: dict[str, Any]) -> None:
        await self.send(event["frame"])

    async def chat_delta(self, event: dict[str, Any]) -> None:
        """Forward only the characters this client does not have yet, in order."""
        message_id, offset, text = event["message_id"], event["offset"], event["text"]
        have = self.offsets.get(message_id, 0)
        end = offset + len(text)
        if end <= have:
            return  # a duplicate (e.g. the snapshot overlapped the live stream)
        if offset > have:
            # A gap (a frame lost on the way): ask the turn for its text so far.
            if message_id not in self.resyncing:
                self.resyncing.add(message_id)
                await runtime.request_snapshot(
                    uuid.UUID(event["conversation_id"]), self.channel_name
                )
            return
        self.resyncing.discard(message_id)
        self.offsets[message_id] = end
        if offset == have and "frame" in event:
            await self.send(event["frame"])
            return
        await self.send(
            protocol.assistant_delta(
                event["conversation_id"], message_id, have, text[have - offset :]
            )
        )

    async def _send_error(self, code: str, message: str, ref: str | None = None) -> None:
        await self.send(protocol.error(code, message, ref))
