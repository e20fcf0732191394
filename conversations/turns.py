"""The turn engine: one assistant answer, from the user's message to its final status.

A Turn talks to the model (rounds of streamed text and tool calls), runs the
tools, and ends the answer with a stored final state and its frame. It is run
by this process's runtime (conversations/runtime.py) as a task that a closed
socket does not stop; only `cancel()` (or the process's end) does.
Everything it produces goes to its followers on this process in-process and
into the answer's stream, through which followers on other processes get it
(conversations/delivery.py).

Hot path rules: no database write per token. Deltas are coalesced
(conversations/coalescer.py) and published with the character offset they
start at; the text is checkpointed to the database at a bounded interval and
at the end.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings

from conversations import dbpool, delivery, images, llm, protocol, streams
from conversations.coalescer import Coalescer
from conversations.models import INTERRUPTED_MESSAGE, Conversation, Message, ToolInvocation

log = logging.getLogger(__name__)


@dataclass
class Prompt:
    """What the model is asked: the messages of the request, and the question they end with."""

    messages: list[dict[str, Any]]
    question: str
    first_exchange: bool

    @classmethod
    def of(cls, history: list[Message]) -> Prompt:
        """From the history (oldest first; it ends with the question the answer streams for).

        Reads what `history` prefetched, or storage for a vision model's
        attachments: run it on a database thread.
        """
        return cls(
            llm.model_messages(history),
            question=history[-1].text if history else "",
            first_exchange=len(history) == 1,
        )


@dataclass
class TurnContext:
    conversation_id: uuid.UUID
    message_id: int  # the answer's
    user: Any  # the conversation's owner (image quota, attribution)
    continuation: bool = False  # carry on a truncated answer instead of starting one
    # Read with the question's own storing (Conversation.objects.start_turn); None:
    # the turn reads it itself (a regeneration, a continuation).
    prompt: Prompt | None = None
    # A frame for other processes' followers before the answer (the question it
    # answers), sent with its announcement: one PUBLISH, and in that order.
    notice: str | None = None


class Turn:
    def __init__(self, context: TurnContext) -> None:
        self.context = context
        self.stream = Coalescer(settings.STREAM_COALESCE_MS / 1000, self._publish_delta)
        self.usage: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None
        self.question = ""  # the user message this answers, loaded with the context
        self.first_exchange = False
        self.tool_calls = 0
        self.truncated = False  # the model stopped at its length limit
        self.wants_title = False  # a complete first exchange: the runtime asks for a title
        self.cancel_requested = False
        self.ended_elsewhere = False  # a Stop or a sweep ended the answer in the database
        self.resume_from = ""  # a continuation's text so far
        self.starting: asyncio.Task[None] | None = None  # the answer's start, going out

    @property
    def text(self) -> str:
        return self.stream.text

    # --- lifecycle ---------------------------------------------------------------

    def cancel(self) -> None:
        """Stop at once, keeping the text so far: the user's Stop."""
        if self.task is not None and not self.task.done():
            self.cancel_requested = True
            self.task.cancel()

    def interrupt(self) -> None:
        """Stop at once because the process stops: the answer ends `interrupted`."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            async with asyncio.timeout(settings.TURN_TIMEOUT_SECONDS):
                await self._converse()
        except asyncio.CancelledError:
            if self.ended_elsewhere:
                return
            if self.cancel_requested:
                await self._end(Message.Status.CANCELLED)
            else:  # the process is shutting down under us
                await self._end(
                    Message.Status.INTERRUPTED, llm.LLMError("interrupted", INTERRUPTED_MESSAGE)
                )
        except TimeoutError:
            await self._end(
                Message.Status.FAILED, llm.LLMError("turn_timeout", "The answer took too long.")
            )
        except llm.LLMError as exc:
            await self._end(Message.Status.FAILED, exc)
        except Exception:
            log.exception("turn %s crashed", self.context.message_id)
            await self._end(
                Message.Status.FAILED,
                llm.LLMError("internal_error", "Something went wrong on our side."),
            )
        else:
            await self._end(Message.Status.COMPLETE)
        finally:
            heartbeat.cancel()

    async def _heartbeat(self) -> None:
        """Checkpoint the text at a fixed pace, however many tokens arrive.

        The write doubles as proof of life: a long image call must not make a
        live answer look dead to the recovery sweep.
        """
        message = Message(pk=self.context.message_id)
        while True:
            await asyncio.sleep(settings.CHECKPOINT_SECONDS)
            if not await database_sync_to_async(message.checkpoint)(self.text):
                # Ended elsewhere (its followers were told): stop, and store nothing more.
                log.warning("answer %s was ended elsewhere; stopping", self.context.message_id)
                self.ended_elsewhere = True
                if self.task is not None:
                    self.task.cancel()
                return

    # --- the conversation with the model --------------------------------------

    async def _converse(self) -> None:
        """Talk to the model until it answers without calling a tool.

        Bounded whatever the server does: at most MAX_MODEL_ROUNDS requests,
        the last one offering no tools, and tool calls that come back when
        none were offered are not run (a server that does that once made 780
        requests in one answer).
        """
        if self.context.prompt is None:
            self.context.prompt = await dbpool.run(self._load_context)()
        messages = self.context.prompt.messages
        self.question = self.context.prompt.question
        self.first_exchange = self.context.prompt.first_exchange
        if self.context.continuation:
            self.stream = Coalescer(self.stream.window, self._publish_delta, self.resume_from)
        # The request to the model goes out now; the answer's start is stored in
        # its stream and announced meanwhile, ahead of any text (the coalescer's
        # order). Its round trips to Redis overlap the model's own first wait.
        self.starting = await self.stream.lead(self._start)
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
            await self.stream.flush()
            messages.append(
                llm.tool_call_message(
                    self.text[segment_start:], [(c.call_id, c.name, c.arguments) for c in calls]
                )
            )
            for call in calls:
                result = await self._run_tool(call, allowed=calls_left > 0)
                calls_left -= 1
                messages.append(llm.tool_result_message(call.call_id, result))

    async def _start(self) -> None:
        await self._send_event(protocol.assistant_started(*self._ids()), mark=streams.START)
        try:
            # Other processes' followers read the stream from its start (the event above).
            await delivery.announce(*self._ids(), notice=self.context.notice)
        except Exception as exc:  # Redis away: they learn of it by catching up
            log.warning("answer %s: announcing it failed: %s", self.context.message_id, exc)

    async def _stream_round(
        self, messages: list[dict[str, Any]], *, offered: bool, after_tools: bool
    ) -> tuple[list[llm.ToolCallRequest] | None, int]:
        """One model request: (its tool calls, or None if the answer is done; its text's start)."""
        calls: list[llm.ToolCallRequest] = []
        segment_start = len(self.text)
        finish_reason = "stop"
        tools = images.tool_schemas() if offered else None
        try:
            async for event in llm.stream_chat(messages, tools):
                if isinstance(event, llm.TextDelta):
                    starts_after_image = after_tools and len(self.text) == segment_start
                    if starts_after_image and self.text[-1:] not in ("", "\n"):
                        # Text after an image starts a new paragraph, not mid-line
                        # ("…at dusk.Here is…" for clients that print plain text).
                        self.stream.add("\n\n")
                    self.stream.add(event.text)
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

    def _load_context(self) -> Prompt:
        # The answer streams, so the history ends with the question it answers.
        history = Conversation(pk=self.context.conversation_id).history()
        if not self.context.continuation:
            return Prompt.of(history)
        # Carry on the truncated answer: its text so far is this turn's start,
        # and the model sees it, then is asked to go on from where it stopped.
        answer = Message.objects.prefetch_related("tool_invocations__images__parents").get(
            pk=self.context.message_id
        )
        self.resume_from = answer.text
        self.usage = dict(answer.usage)
        self.tool_calls = len(answer.tool_invocations.all())
        messages = [
            *llm.model_messages([*history, answer]),
            {"role": "user", "content": llm.CONTINUE_PROMPT},
        ]
        return Prompt(messages, question=history[-1].text if history else "", first_exchange=False)

    async def _run_tool(self, call: llm.ToolCallRequest, *, allowed: bool) -> dict[str, Any]:
        request: images.ImageRequest | None
        try:
            request = images.parse_arguments(call.arguments, call.name)
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
        ids = {"tool_call_id": invocation.id, "name": invocation.name}
        await self._publish(
            protocol.tool_started(
                *self._ids(),
                **ids,
                offset=invocation.text_offset,
                prompt=invocation.prompt,
                started_at=invocation.created_at.isoformat(),
            )
        )
        try:
            if call.name not in images.TOOL_NAMES:
                raise images.ToolError("unknown_tool", f"There is no tool named {call.name!r}.")
            if parse_error is not None:
                raise parse_error
            if not allowed:
                raise images.ToolError("tool_limit", "Too many images in one answer.")
            assert request is not None
            outcome = await images.generate(
                invocation,
                request,
                user=self.context.user,
                conversation_id=self.context.conversation_id,
                on_preview=self._previewer(invocation.id),
            )
        except images.ToolError as exc:
            await database_sync_to_async(invocation.fail)(exc.message)
            await self._publish(
                protocol.tool_failed(*self._ids(), **ids, code=exc.code, message=exc.message)
            )
            failed: dict[str, Any] = invocation.result  # a JSONField: Any to the checker
            return failed
        made = outcome.images
        # images.generate completed the invocation with the images' rows (one trip).
        result: dict[str, Any] = invocation.result
        notes: list[str] = list(result.get("notes", []))
        await self._publish(
            protocol.tool_completed(
                *self._ids(),
                **ids,
                images=[image.lineage_summary(outcome.parents) for image in made],
                notes=notes,
                images_left_today=outcome.remaining,
            )
        )
        return result

    def _previewer(self, tool_call_id: int) -> images.PreviewSink | None:
        """Partial images to the followers as tool.preview frames (live only, never stored)."""
        if not images.model_options().previews:
            return None

        async def preview(index: int, partial: int, data: bytes) -> None:
            try:
                small = await sync_to_async(images.preview_data_url, thread_sensitive=False)(data)
            except images.ToolError:
                return  # an unreadable preview is skipped; the final image is what counts
            await self._publish(
                protocol.tool_preview(
                    *self._ids(),
                    tool_call_id=tool_call_id,
                    index=index,
                    partial=partial,
                    data_url=small.data_url,
                    width=small.width,
                    height=small.height,
                )
            )

        return preview

    # --- streaming out -----------------------------------------------------------

    def _ids(self) -> tuple[uuid.UUID, int]:
        return self.context.conversation_id, self.context.message_id

    async def _publish_delta(self, offset: int, text: str) -> None:
        message_id = self.context.message_id
        try:
            # Kept outside this process first: a crash loses at most this window.
            await streams.streams().append(message_id, offset, text)
        except Exception as exc:  # the answer goes on; only its crash safety suffers
            log.warning("answer %s: the stream append failed: %s", message_id, exc)
        await delivery.to_local(
            self.context.conversation_id,
            delivery.delta_event(self.context.conversation_id, message_id, offset, text),
        )

    async def _publish(self, payload: str, *, mark: str = "") -> None:
        """An event, after the text before it: into the stream, then to local followers."""
        await self.stream.then(lambda: self._send_event(payload, mark=mark))

    async def _send_event(self, payload: str, *, mark: str = "") -> None:
        message_id = self.context.message_id
        try:
            await streams.streams().append_event(message_id, payload, mark=mark)
        except Exception as exc:
            log.warning("answer %s: the stream append failed: %s", message_id, exc)
        event = delivery.frame_event(
            payload,
            starts=message_id if mark == streams.START else None,
            ends=message_id if mark == streams.END else None,
        )
        await delivery.to_local(self.context.conversation_id, event)

    # --- endings -----------------------------------------------------------------

    async def _end(self, status: str, error: llm.LLMError | None = None) -> None:
        """Store the final state, then tell every follower (the same frame as catch-up)."""
        # Whatever was received is shown: the stored text is what the user saw.
        await self.stream.settle()
        truncated = self.truncated and status == Message.Status.COMPLETE
        code, message = (error.code, error.message) if error else ("", "")
        html = await dbpool.run(self._save_final)(status, code, message, truncated)
        self.wants_title = (
            status == Message.Status.COMPLETE and self.first_exchange and settings.LLM_TITLES
        )
        await self._publish(
            protocol.answer_ended(
                *self._ids(),
                status=status,
                text_length=len(self.text),
                html=html,
                usage=self.usage,
                truncated=truncated,
                error_code=code,
                error_message=message,
            ),
            mark=streams.END,
        )
        try:
            await streams.streams().finish(self.context.message_id)
        except Exception as exc:
            log.warning("answer %s: closing its stream failed: %s", self.context.message_id, exc)

    async def retitle(self) -> None:
        """Ask the model for a title after the first exchange; tell every follower."""
        title = await llm.suggest_title(self.question, self.text)
        if not title:
            return
        await Conversation.objects.filter(pk=self.context.conversation_id).aupdate(title=title)
        frame = protocol.conversation_updated(self.context.conversation_id, title)
        await delivery.publish(self.context.conversation_id, delivery.frame_event(frame))

    def _save_final(self, status: str, code: str, error: str, truncated: bool) -> str:
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
            truncated=truncated,
            # Without tool calls the HTML is known now: stored by the same UPDATE.
            invocations=None if self.tool_calls else [],
        )
        if not self.tool_calls:
            return message.body_html(invocations=[])
        # Tool calls cut short by a cancel must not look as if they still run.
        for invocation in message.tool_invocations.filter(status=ToolInvocation.Status.RUNNING):
            invocation.fail("The answer was stopped before the image was finished.")
        final: Message = Message.objects.prefetch_related("tool_invocations__images__parents").get(
            pk=message.pk
        )
        return final.body_html()
