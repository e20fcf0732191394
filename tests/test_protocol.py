"""The protocol's one builder per frame: live and catch-up frames of every ending agree."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from conversations import protocol, runtime
from conversations.models import Conversation, Message
from offline_model import Fail, Hang, Reply

pytestmark = pytest.mark.django_db(transaction=True)

ENDINGS = {
    "complete": (Reply(text="All done."),),
    "truncated": (Reply(tokens=["Cut ", "off "], finish_reason="length"),),
    "upstream_stream_cut": (Reply(tokens=["Once ", "upon"], cut_after=1),),
    "upstream_error": (Fail(500), Fail(500)),
    "upstream_rejected": (Fail(400, "Bad request", type="invalid_request_error"),),
    "upstream_auth": (Fail(401, "Incorrect API key", type="invalid_request_error"),),
    "upstream_model_not_found": (Fail(404, "No such model", type="invalid_request_error"),),
    "upstream_rate_limited": (Fail(429, "Slow down"), Fail(429, "Slow down")),
    "upstream_empty": (Reply(text=""), Reply(text="")),
    "content_filtered": (Reply(tokens=["Well "], finish_reason="content_filter"),),
    "context_too_long": (
        Fail(
            400,
            "maximum context length",
            type="invalid_request_error",
            code="context_length_exceeded",
        ),
    ),
    "upstream_stalled": (Reply(tokens=["Slow ", "one"], token_delay=2),),
    "turn_timeout": (Hang(5),),
}


async def end_of_answer(socket: Any) -> dict[str, Any]:
    frames = await socket.receive_until("assistant.completed", "assistant.failed", timeout=15)
    return frames[-1]


async def caught_up(connect: Any, user: Any, final: dict[str, Any]) -> dict[str, Any]:
    """What a client that arrives after the end is told, from the stored answer."""
    late = await connect(user)
    await late.send(
        "conversation.subscribe",
        conversation_id=final["conversation_id"],
        message_id=final["message_id"],
        offset=0,
    )
    return await end_of_answer(late)


@pytest.mark.parametrize("ending", ENDINGS)
async def test_the_live_final_frame_and_the_catch_up_final_frame_are_identical(
    ending: str, make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.LLM_MAX_RETRIES = 0
    settings.LLM_TIMEOUT_SECONDS = 10 if ending == "turn_timeout" else 0.5
    settings.TURN_TIMEOUT_SECONDS = 1.5 if ending == "turn_timeout" else 30
    fake_openai.script_chat(*ENDINGS[ending])
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)
    await socket.send("message.send", client_message_id="c1", text="hello")
    live = await end_of_answer(socket)
    if ending == "complete":
        assert live["type"] == "assistant.completed" and live["truncated"] is False
    elif ending == "truncated":
        assert live["type"] == "assistant.completed" and live["truncated"] is True
    else:
        assert live["type"] == "assistant.failed" and live["code"] == ending
        assert live["retryable"] is protocol.CODES[ending].retryable
    assert await caught_up(connect, user, live) == live


async def test_a_cancelled_answer_ends_the_same_live_and_on_catch_up(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(tokens=[f"w{n} " for n in range(50)], token_delay=0.05))
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)
    await socket.send("message.send", client_message_id="c1", text="count")
    accepted = (await socket.receive_until("message.accepted"))[-1]
    await socket.receive_until("assistant.delta")
    await socket.send("turn.cancel", conversation_id=accepted["conversation_id"])
    live = await end_of_answer(socket)
    assert live["type"] == "assistant.completed" and live["status"] == "cancelled"
    assert await caught_up(connect, user, live) == live


async def test_an_interrupted_answer_ends_the_same_from_the_sweep_and_on_catch_up(
    make_user: Any, connect: Any
) -> None:
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)
    conversation = await Conversation.objects.acreate(user=user)
    question = await conversation.messages.acreate(role="user", text="hi")
    answer = await conversation.messages.acreate(
        role="assistant",
        status="streaming",
        reply_to=question,
        text="Half an ans",
        heartbeat_at=timezone.now() - timedelta(minutes=5),
    )
    await socket.send("conversation.subscribe", conversation_id=str(conversation.pk))
    await socket.receive_until("conversation.state")
    assert await runtime.sweep_stale_turns() == 1
    live = await end_of_answer(socket)
    assert live["type"] == "assistant.failed" and live["code"] == "interrupted"
    assert live["status"] == "interrupted" and live["retryable"] is True
    assert (await Message.objects.aget(pk=answer.pk)).status == "interrupted"
    assert await caught_up(connect, user, live) == live


def test_every_code_the_server_can_send_has_a_text_for_people() -> None:
    import inspect
    import re

    from conversations import llm

    source = inspect.getsource(llm) + inspect.getsource(protocol)
    raised = set(re.findall(r'LLMError\(\s*"([a-z_]+)"', source))
    assert raised, "no codes found"
    assert raised <= set(protocol.CODES), raised - set(protocol.CODES)
