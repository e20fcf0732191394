"""The turn engine: one assistant answer, from the user's message to its final status.

A turn is an asyncio task owned by the process, not by the socket that asked
for it: a closed tab, a refresh or a second client does not stop it, only
`cancel()` does. Everything it produces goes to the conversation's channel-layer
group, so any client on any process can follow it.

Hot path rules: no database write per token. Deltas are coalesced over a short
window and published with the character offset they start at; the text is
checkpointed to the database at a bounded interval and at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from conversations import images, llm
from conversations.models import INTERRUPTED_MESSAGE, Conversation, Message, ToolInvocation

log = logging.getLogger(__name__)

INTERRUPTED = llm.LLMError("interrupted", INTERRUPTED_MESSAGE, retryable=True)

# Turns running in this process, by conversation id. Holding the task here is
# also what keeps it alive after the socket that started it has gone.
_running: dict[uuid.UUID, Turn] = {}


async def publish(conversation_id: uuid.UUID, payload: str) -> None:
    """Send one protocol frame to everyone following the conversation."""
    await get_channel_layer().group_send(
        group_name(conversation_id), {"type": "chat.event", "frame": payload}
    )


def control_group(conversation_id: uuid.UUID) -> str:
    """The group a running turn listens on for cancel and snapshot requests."""
    return f"turnctl.{conversation_id.hex}"


def group_name(conversation_id: uuid.UUID) -> str:
    return f"conv.{conversation_id.hex}"


def frame(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


CONTINUE_PROMPT = (
    "Your last answer was cut off by its length limit. Continue it exactly where it "
    "stopped, without repeating anything and without any preamble."
)


def model_messages(history: list[Message]) -> list[dict[str, Any]]:
    """The context sent to the model, rebuilt from the stored history.

    Image tool results appear only as their small JSON summary
    ({image_id, prompt, revised_prompt, status}): never bytes, never a URL.
    Only the fields the chat-completions spec requires, in shapes every
    server accepts (see tool_call_message).
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": settings.SYSTEM_PROMPT}]
    for message in history:
        if message.role == Message.Role.USER:
            messages.append({"role": "user", "content": message.text})
            continue
        pending_calls: list[ToolInvocation] = []
        text_before_calls = ""
        for text, invocation in message.segments():
            if pending_calls and text:
                _append_tool_round(messages, text_before_calls, pending_calls)
                pending_calls, text_before_calls = [], ""
            if invocation is None:
                if text:
                    messages.append({"role": "assistant", "content": text})
                continue
            if not pending_calls:
                text_before_calls = text
            pending_calls.append(invocation)
        if pending_calls:
            _append_tool_round(messages, text_before_calls, pending_calls)
    return messages


def _append_tool_round(
    messages: list[dict[str, Any]], text: str, calls: list[ToolInvocation]
) -> None:
    messages.append(
        tool_call_message(
            text, [(call.call_id, call.name, json.dumps(call.arguments)) for call in calls]
        )
    )
    for call in calls:
        messages.append(tool_result_message(call.call_id, call.model_result()))


def tool_call_message(text: str, calls: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The assistant's tool-call turn from (id, name, JSON arguments) triples.

    `content` is a string, never null: llama.cpp's server refuses null with
    HTTP 500, and since the history is rebuilt the same way every time, so
    would every later turn of the conversation.
    """
    return {
        "role": "assistant",
        "content": text,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            for call_id, name, args in calls
        ],
    }


def tool_result_message(call_id: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)}


@dataclass
class TurnContext:
    conversation_id: uuid.UUID
    message_id: int  # the answer's
    user: Any  # the conversation's owner (image quota, attribution)
    continuation: bool = False  # carry on a truncated answer instead of starting one


class Turn:
    def __init__(self, context: TurnContext) -> None:
        self.context = context
        self.group = group_name(context.conversation_id)
        self.layer = get_channel_layer()
        self.text = ""  # everything received so far
        self.published = 0  # how much of it has gone out as deltas
        self.usage: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None
        self.question = ""  # the user message this answers, loaded with the context
        self.first_exchange = False
        self.tool_calls = 0
        self.truncated = False  # the model stopped at its length limit
        self.cancel_requested = False
        self._publish_lock = asyncio.Lock()
        self._last_flush = float("-inf")
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._window = settings.STREAM_COALESCE_MS / 1000

    # --- lifecycle ---------------------------------------------------------------

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.cancel_requested = True
            self.task.cancel()

    async def run(self) -> None:
        control = await control_channel()
        await self.layer.group_add(control_group(self.context.conversation_id), control)
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            async with asyncio.timeout(settings.TURN_TIMEOUT_SECONDS):
                await self._converse()
        except asyncio.CancelledError:
            if self.cancel_requested:
                await self._finish(Message.Status.CANCELLED)
            else:  # the process is shutting down under us
                await self._fail(INTERRUPTED, status=Message.Status.INTERRUPTED)
        except TimeoutError:
            await self._fail(
                llm.LLMError("turn_timeout", "The answer took too long.", retryable=True)
            )
        except llm.LLMError as exc:
            await self._fail(exc)
        except Exception:
            log.exception("turn %s crashed", self.context.message_id)
            await self._fail(
                llm.LLMError("internal_error", "Something went wrong on our side.", retryable=True)
            )
        else:
            await self._finish(Message.Status.COMPLETE)
        finally:
            heartbeat.cancel()
            await self.layer.group_discard(control_group(self.context.conversation_id), control)

    async def _heartbeat(self) -> None:
        """Checkpoint the text at a fixed pace, however many tokens arrive.

        The write doubles as proof of life: a long image call must not make a
        live answer look dead to the recovery sweep.
        """
        message = Message(pk=self.context.message_id)
        while True:
            await asyncio.sleep(settings.CHECKPOINT_SECONDS)
            await database_sync_to_async(message.checkpoint)(self.text)

    async def send_snapshot(self, reply_to: str) -> None:
        """Send everything published so far; the consumer trims what its client has."""
        async with self._publish_lock:
            await self.layer.send(
                reply_to,
                {
                    "type": "chat.delta",
                    **self._ids(),
                    "offset": 0,
                    "text": self.text[: self.published],
                },
            )

    # --- the conversation with the model --------------------------------------

    async def _converse(self) -> None:
        """Talk to the model until it answers without calling a tool.

        Bounded whatever the server does: at most MAX_MODEL_ROUNDS requests,
        the last one offering no tools, and tool calls that come back when
        none were offered are not run (a server that does that once made 780
        requests in one answer).
        """
        messages = await database_sync_to_async(self._load_context)()
        await self._publish(frame("assistant.started", **self._ids()))
        calls_left = settings.MAX_TOOL_CALLS_PER_TURN
        for round_number in range(1, settings.MAX_MODEL_ROUNDS + 1):
            offered = calls_left > 0 and round_number < settings.MAX_MODEL_ROUNDS
            calls, segment_start = await self._stream_round(
                messages, offered=offered, after_tools=round_number > 1
            )
            if calls is None:
                return
            if not offered:
                log.warning(
                    "answer %s: the model called %d tool(s) although none were offered; not run",
                    self.context.message_id,
                    len(calls),
                )
                return
            await self._flush()
            messages.append(
                tool_call_message(
                    self.text[segment_start:], [(c.call_id, c.name, c.arguments) for c in calls]
                )
            )
            for call in calls:
                result = await self._run_tool(call, allowed=calls_left > 0)
                calls_left -= 1
                messages.append(tool_result_message(call.call_id, result))

    async def _stream_round(
        self, messages: list[dict[str, Any]], *, offered: bool, after_tools: bool
    ) -> tuple[list[llm.ToolCallRequest] | None, int]:
        """One model request: (its tool calls, or None if the answer is done; its text's start)."""
        calls: list[llm.ToolCallRequest] = []
        segment_start = len(self.text)
        finish_reason = "stop"
        tools = [images.tool_schema()] if offered else None
        try:
            async for event in llm.stream_chat(messages, tools):
                if isinstance(event, llm.TextDelta):
                    starts_after_image = after_tools and len(self.text) == segment_start
                    if starts_after_image and self.text[-1:] not in ("", "\n"):
                        # Text after an image starts a new paragraph, not mid-line
                        # ("…at dusk.Here is…" for clients that print plain text).
                        self._add_text("\n\n")
                    self._add_text(event.text)
                elif isinstance(event, llm.ToolCallRequest):
                    calls.append(event)
                else:
                    finish_reason = event.finish_reason or "stop"
                    for key, value in event.usage.items():
                        self.usage[key] = self.usage.get(key, 0) + value
        except llm.LLMError as exc:
            if exc.code == "upstream_empty" and after_tools:
                return None, segment_start  # nothing to add after the images: a fine ending
            raise
        if finish_reason == "content_filter":
            raise llm.LLMError(
                "content_filtered",
                "The model provider's content filter stopped this answer.",
                retryable=False,
            )
        self.truncated = finish_reason == "length" and not calls
        return (calls or None), segment_start

    def _load_context(self) -> list[dict[str, Any]]:
        history = Conversation(pk=self.context.conversation_id).history()
        # The answer streams, so the history ends with the question it answers.
        self.question = history[-1].text if history else ""
        self.first_exchange = len(history) == 1
        if not self.context.continuation:
            return model_messages(history)
        # Carry on the truncated answer: its text so far is this turn's start,
        # and the model sees it, then is asked to go on from where it stopped.
        answer = Message.objects.prefetch_related("tool_invocations__image").get(
            pk=self.context.message_id
        )
        self.text = answer.text
        self.published = len(answer.text)
        self.usage = dict(answer.usage)
        self.tool_calls = len(answer.tool_invocations.all())
        self.first_exchange = False
        return [
            *model_messages([*history, answer]),
            {"role": "user", "content": CONTINUE_PROMPT},
        ]

    async def _run_tool(self, call: llm.ToolCallRequest, *, allowed: bool) -> dict[str, Any]:
        try:
            request: images.ImageRequest | None = images.parse_arguments(call.arguments)
            arguments, parse_error = request.arguments(), None
        except images.ToolError as exc:
            request, arguments, parse_error = None, {"raw": call.arguments[:1000]}, exc
        self.tool_calls += 1
        invocation = await database_sync_to_async(ToolInvocation.objects.create)(
            message_id=self.context.message_id,
            call_id=call.call_id[:100],
            name=call.name[:100],
            arguments=arguments,
            text_offset=len(self.text),
        )
        ids = {**self._ids(), "tool_call_id": invocation.id, "name": invocation.name}
        await self._publish(
            frame(
                "tool.started",
                **ids,
                offset=invocation.text_offset,
                prompt=invocation.prompt,
                started_at=invocation.created_at.isoformat(),
            )
        )
        try:
            if parse_error is not None:
                raise parse_error
            if call.name != images.TOOL_NAME:
                raise images.ToolError("unknown_tool", f"There is no tool named {call.name!r}.")
            if not allowed:
                raise images.ToolError("tool_limit", "Too many images in one answer.")
            assert request is not None
            image, remaining = await images.generate(
                invocation,
                request,
                user=self.context.user,
                conversation_id=self.context.conversation_id,
            )
        except images.ToolError as exc:
            await database_sync_to_async(invocation.fail)(exc.message)
            await self._publish(
                frame("tool.failed", **ids, error={"code": exc.code, "message": exc.message})
            )
            return invocation.result
        result: dict[str, Any] = {
            "status": "ok",
            "image_id": str(image.id),
            "prompt": image.prompt,
            "revised_prompt": image.revised_prompt or None,
        }
        if request.notes:
            result["notes"] = request.notes
        if remaining is not None:
            result["images_left_today"] = remaining
        await database_sync_to_async(invocation.complete)(result)
        await self._publish(
            frame(
                "tool.completed",
                **ids,
                image=image.summary(),
                notes=request.notes,
                images_left_today=remaining,
            )
        )
        return result

    # --- streaming out -----------------------------------------------------------

    def _ids(self) -> dict[str, Any]:
        return {
            "conversation_id": str(self.context.conversation_id),
            "message_id": self.context.message_id,
        }

    def _add_text(self, text: str) -> None:
        self.text += text
        loop = asyncio.get_running_loop()
        now = loop.time()
        # Leading edge: a delta after a quiet spell goes out at once (time to
        # first token); within the window, pieces wait and go out together.
        if self._flush_handle is None and self._flush_task is None:
            delay = max(0.0, self._last_flush + self._window - now)
            self._flush_handle = loop.call_later(delay, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_handle = None
        self._flush_task = asyncio.create_task(self._flush())
        self._flush_task.add_done_callback(self._flush_done)

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        self._flush_task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("publishing a delta failed: %s", task.exception())

    async def _flush(self) -> None:
        async with self._publish_lock:
            if self.published >= len(self.text):
                return
            offset, text = self.published, self.text[self.published :]
            self.published = len(self.text)
            self._last_flush = asyncio.get_running_loop().time()
            ids = self._ids()
            await self.layer.group_send(
                self.group,
                {
                    "type": "chat.delta",
                    **ids,
                    "offset": offset,
                    "text": text,
                    # Encoded once here, not once per follower: most of them
                    # need exactly these bytes.
                    "frame": frame("assistant.delta", **ids, offset=offset, text=text),
                },
            )

    async def _publish(self, payload: str) -> None:
        await self._flush()
        async with self._publish_lock:
            await self.layer.group_send(self.group, {"type": "chat.event", "frame": payload})

    # --- endings -----------------------------------------------------------------

    async def _settle_pending_writes(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        # Whatever was received is shown: the stored text is what the user saw.
        await self._flush()

    async def _finish(self, status: str) -> None:
        await self._settle_pending_writes()
        html = await database_sync_to_async(self._save_final)(status, "", "")
        if status == Message.Status.COMPLETE and self.first_exchange and settings.LLM_TITLES:
            # After the answer, not before: a title must never delay the text.
            _background(self._retitle())
        await self._publish(
            frame(
                "assistant.completed",
                **self._ids(),
                status=status,
                text_length=len(self.text),
                html=html,
                usage=self.usage,
                truncated=self.truncated and status == Message.Status.COMPLETE,
            ),
        )

    async def _fail(self, error: llm.LLMError, status: str = Message.Status.FAILED) -> None:
        await self._settle_pending_writes()
        html = await database_sync_to_async(self._save_final)(status, error.code, error.message)
        await self._publish(
            frame(
                "assistant.failed",
                **self._ids(),
                code=error.code,
                message=error.message,
                retryable=error.retryable,
                text_length=len(self.text),
                html=html,
            ),
        )

    async def _retitle(self) -> None:
        title = await llm.suggest_title(self.question, self.text)
        if not title:
            return
        await Conversation.objects.filter(pk=self.context.conversation_id).aupdate(title=title)
        await publish(
            self.context.conversation_id,
            frame(
                "conversation.updated",
                conversation_id=str(self.context.conversation_id),
                title=title,
            ),
        )

    def _save_final(self, status: str, code: str, error: str) -> str:
        """Store the final state and return the message's HTML (one trip to the ORM thread).

        One UPDATE for an answer without tool calls, the usual case: its HTML
        needs nothing more from the database.
        """
        message = Message(
            pk=self.context.message_id,
            conversation_id=self.context.conversation_id,
            role=Message.Role.ASSISTANT,
        )
        message.finish(
            status,
            self.text,
            usage=self.usage,
            error_code=code,
            error_message=error,
            truncated=self.truncated and status == Message.Status.COMPLETE,
        )
        if not self.tool_calls:
            return message.body_html(invocations=[])
        # Tool calls cut short by a cancel must not look as if they still run.
        for invocation in message.tool_invocations.filter(status=ToolInvocation.Status.RUNNING):
            invocation.fail("The answer was stopped before the image was finished.")
        return (
            Message.objects.prefetch_related("tool_invocations__image")
            .get(pk=message.pk)
            .body_html()
        )


# One control receiver per process (per event loop): it is never cancelled while
# the process runs. Cancelling a pending channels-redis receive() mid-BZPOPMIN
# leaves the shared connection unusable for the process's other receivers, so
# turns do not each run (and cancel) a receiver of their own.
_control: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, asyncio.Task[None]]]
_control = weakref.WeakKeyDictionary()


async def control_channel() -> str:
    """This process's channel for cancel and snapshot requests to its turns."""
    loop = asyncio.get_running_loop()
    if loop not in _control:
        layer = get_channel_layer()
        # The default prefix matters: channels-redis serves every process-local
        # channel through one BZPOPMIN on "specific.<client>!", under one lock.
        channel = await layer.new_channel()
        _control[loop] = (channel, loop.create_task(_serve_control(layer, channel)))
        _sweepers[loop] = loop.create_task(_sweep_forever())
    return _control[loop][0]


async def _serve_control(layer: Any, channel: str) -> None:
    while True:
        request = await layer.receive(channel)
        try:
            turn = _running.get(uuid.UUID(request["conversation_id"]))
            if turn is None:
                continue  # finished meanwhile, or another process's turn
            if request["type"] == "turn.cancel":
                turn.cancel()
            elif request["type"] == "turn.snapshot":
                await turn.send_snapshot(request["reply_to"])
        except Exception:
            log.exception("bad turn control request %r", request)


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]]
_sweepers = weakref.WeakKeyDictionary()


async def sweep_stale_turns() -> int:
    """Close answers whose process died, and tell whoever follows them."""
    closed = await database_sync_to_async(_close_stale)()
    for message, html in closed:
        payload = frame(
            "assistant.failed",
            conversation_id=str(message.conversation_id),
            message_id=message.pk,
            code=INTERRUPTED.code,
            message=INTERRUPTED.message,
            retryable=INTERRUPTED.retryable,
            text_length=len(message.text),
            html=html,
        )
        await publish(message.conversation_id, payload)
    return len(closed)


def _close_stale() -> list[tuple[Message, str]]:
    closed = Message.objects.mark_stale_interrupted()
    return [
        (
            message,
            Message.objects.prefetch_related("tool_invocations__image")
            .get(pk=message.pk)
            .body_html(),
        )
        for message in closed
    ]


async def _sweep_forever() -> None:
    """At start-up and then periodically (every process does it; it is idempotent)."""
    while True:
        try:
            await sweep_stale_turns()
        except Exception:
            log.exception("sweeping stale answers failed")
        await asyncio.sleep(max(1.0, settings.STALE_TURN_SECONDS / 2))


_tasks: set[asyncio.Task[Any]] = set()


def _background(coroutine: Any) -> None:
    """Run a fire-and-forget task, holding a reference so it is not collected."""
    task = asyncio.get_running_loop().create_task(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def launch(context: TurnContext) -> Turn:
    """Start a turn as a task of this process (it outlives the calling socket)."""
    turn = Turn(context)
    turn.task = asyncio.get_running_loop().create_task(turn.run())
    _running[context.conversation_id] = turn
    turn.task.add_done_callback(lambda _: _running.pop(context.conversation_id, None))
    return turn


def running(conversation_id: uuid.UUID) -> Turn | None:
    return _running.get(conversation_id)


async def request_cancel(conversation_id: uuid.UUID) -> None:
    """Cancel the conversation's turn wherever it runs (this or another process)."""
    turn = _running.get(conversation_id)
    if turn is not None:
        turn.cancel()
        return
    await get_channel_layer().group_send(
        control_group(conversation_id),
        {"type": "turn.cancel", "conversation_id": str(conversation_id)},
    )


async def request_snapshot(conversation_id: uuid.UUID, reply_to: str) -> None:
    """Ask the turn's owner to send the text published so far to `reply_to`."""
    await get_channel_layer().group_send(
        control_group(conversation_id),
        {"type": "turn.snapshot", "conversation_id": str(conversation_id), "reply_to": reply_to},
    )
