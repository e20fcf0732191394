"""The turn engine through real sockets: resume, followers, cancel, limits, failures."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from conversations import limits, runtime
from conversations.models import ApiToken, Conversation, Message, ToolInvocation
from offline_model import Fail, Hang, Reply, ToolCall
from tests.conftest import ChatSocket, open_socket, text_of
from tests.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

TOKENS = [f"word{i} " for i in range(40)]
UPSTREAM = "".join(TOKENS)


def reassemble(have: str, frames: list[dict[str, Any]], message_id: int) -> str:
    """Apply deltas to what a client already had, as docs/protocol.md says to."""
    text = have
    for frame in frames:
        if frame["type"] != "assistant.delta" or frame["message_id"] != message_id:
            continue
        assert frame["offset"] <= len(text), "a gap"
        assert frame["offset"] + len(frame["text"]) > len(text), "a duplicate reached the client"
        text = text[: frame["offset"]] + frame["text"]
    return text


async def streamed_so_far(socket: ChatSocket, message_id: int, at_least: int) -> str:
    while len(text_of(socket.frames, message_id)) < at_least:
        await socket.receive()
    return text_of(socket.frames, message_id)


async def user_and_socket(make_user: Any, connect: Any, name: str = "alice") -> tuple[Any, Any]:
    user = await database_sync_to_async(make_user)(name)
    return user, await connect(user)


async def test_a_client_that_reconnects_mid_answer_gets_exactly_the_missing_text(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    # 2 s: the second socket's login and handshake must come before the end on a
    # loaded machine (the first state frame says "streaming").
    fake_openai.script_chat(Reply(tokens=TOKENS, token_delay=0.05))
    user, first = await user_and_socket(make_user, connect)
    await first.send("message.send", client_message_id="c1", text="talk")
    accepted = await first.receive()
    answer_id = accepted["assistant_message_id"]
    have = await streamed_so_far(first, answer_id, at_least=30)
    await first.close()  # the tab closes; the answer goes on

    second = await connect(user)
    await second.send(
        "conversation.subscribe",
        conversation_id=accepted["conversation_id"],
        message_id=answer_id,
        offset=len(have),
    )
    frames = await second.receive_until("assistant.completed")
    assert frames[0]["type"] == "conversation.state" and frames[0]["status"] == "streaming"
    first_delta = next(f for f in frames if f["type"] == "assistant.delta")
    assert first_delta["offset"] == len(have)
    assert reassemble(have, frames, answer_id) == UPSTREAM
    assert (await Message.objects.aget(pk=answer_id)).text == UPSTREAM


async def test_a_client_that_reconnects_after_the_end_gets_the_rest_and_the_final_frame(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(tokens=TOKENS, token_delay=0.005))
    user, first = await user_and_socket(make_user, connect)
    await first.send("message.send", client_message_id="c1", text="talk")
    accepted = await first.receive()
    answer_id = accepted["assistant_message_id"]
    have = await streamed_so_far(first, answer_id, at_least=10)
    await first.close()
    await eventually(lambda: Message.objects.filter(pk=answer_id, status="complete").aexists())

    second = await connect(user)
    await second.send(
        "conversation.subscribe",
        conversation_id=accepted["conversation_id"],
        message_id=answer_id,
        offset=len(have),
    )
    frames = await second.receive_until("assistant.completed")
    assert reassemble(have, frames, answer_id) == UPSTREAM
    assert frames[-1]["status"] == "complete" and "word39" in frames[-1]["html"]


async def test_two_clients_on_one_conversation_both_receive_every_character_in_order(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(tokens=TOKENS, token_delay=0.005))
    user, phone = await user_and_socket(make_user, connect)
    laptop = await connect(user)
    conversation = await Conversation.objects.acreate(user=user)
    await phone.send("conversation.subscribe", conversation_id=str(conversation.pk))
    assert (await phone.receive())["type"] == "conversation.state"

    await laptop.send(
        "message.send", conversation_id=str(conversation.pk), client_message_id="c1", text="talk"
    )
    laptop_frames = await laptop.receive_until("assistant.completed")
    phone_frames = await phone.receive_until("assistant.completed")
    answer_id = laptop_frames[0]["assistant_message_id"]
    assert text_of(laptop_frames, answer_id) == text_of(phone_frames, answer_id) == UPSTREAM
    assert [f["type"] for f in phone_frames if f["type"] != "assistant.delta"] == [
        "message.created",
        "assistant.started",
        "assistant.completed",
    ]
    assert (phone_frames[0]["text"], phone_frames[0]["client_message_id"]) == ("talk", "c1")


async def test_a_provider_that_frames_its_stream_differently_gives_the_same_text(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    # CRLF line ends, comments, event: lines, raw UTF-8, events cut in two (mid-character).
    tokens = ["Un ", "café ", "字 ", "🙂 ", "naïve ", "end."]
    fake_openai.script_chat(
        Reply(tokens=tokens, tool_calls=[ToolCall(id="call_1")], framing="crlf-split"),
        Reply(tokens=[" Voilà 🎨"], framing="crlf-split"),
    )
    _, socket = await user_and_socket(make_user, connect)
    await socket.send("message.send", client_message_id="c1", text="draw a kite")
    frames = await socket.receive_until("assistant.completed")
    answer_id = frames[0]["assistant_message_id"]
    expected = "".join(tokens) + "\n\n Voilà 🎨"
    assert text_of(frames, answer_id) == expected
    assert [f["type"] for f in frames if f["type"].startswith("tool.")] == [
        "tool.started",
        "tool.completed",
    ]
    assert (await Message.objects.aget(pk=answer_id)).text == expected


async def test_cancel_stops_the_answer_at_once_and_keeps_the_text_so_far(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(tokens=TOKENS, token_delay=0.05))  # 2 s in all
    _, socket = await user_and_socket(make_user, connect)
    await socket.send("message.send", client_message_id="c1", text="talk")
    accepted = await socket.receive()
    answer_id = accepted["assistant_message_id"]
    await streamed_so_far(socket, answer_id, at_least=20)

    await socket.send("turn.cancel", conversation_id=accepted["conversation_id"])
    frames = await socket.receive_until("assistant.completed")
    assert frames[-1]["status"] == "cancelled"
    shown = text_of(socket.frames, answer_id)
    assert 20 <= len(shown) < len(UPSTREAM) and UPSTREAM.startswith(shown)
    answer = await Message.objects.aget(pk=answer_id)
    assert (answer.status, answer.text) == ("cancelled", shown)
    # The conversation is free again.
    await socket.send(
        "message.send",
        conversation_id=accepted["conversation_id"],
        client_message_id="c2",
        text="again",
    )
    assert (await socket.receive_until("assistant.completed"))[-1]["status"] == "complete"


async def test_a_second_send_during_an_answer_gets_turn_in_progress(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(tokens=TOKENS, token_delay=0.05))  # outlives the second send
    _, socket = await user_and_socket(make_user, connect)
    await socket.send("message.send", client_message_id="c1", text="talk")
    accepted = await socket.receive()
    await socket.send(
        "message.send",
        conversation_id=accepted["conversation_id"],
        client_message_id="c2",
        text="and another thing",
    )
    frames = await socket.receive_until("error")
    assert (frames[-1]["code"], frames[-1]["ref"]) == ("turn_in_progress", "c2")
    await socket.receive_until("assistant.completed")
    assert await Message.objects.filter(client_message_id="c2").aexists() is False
    assert len(fake_openai.chat_requests()) == 1


async def test_a_429_is_retried_after_retry_after_and_then_succeeds(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(
        Fail(429, "Slow down", type="rate_limit_error", retry_after=0.3),
        Reply(text="Hello after the wait."),
    )
    _, socket = await user_and_socket(make_user, connect)
    started = time.monotonic()
    await socket.send("message.send", client_message_id="c1", text="hi")
    frames = await socket.receive_until("assistant.completed", "assistant.failed")
    assert frames[-1]["type"] == "assistant.completed"
    assert time.monotonic() - started >= 0.3  # Retry-After was honoured
    assert text_of(frames, frames[0]["assistant_message_id"]) == "Hello after the wait."
    assert len(fake_openai.chat_requests()) == 2


async def test_500s_until_the_retries_run_out_fail_the_answer_as_retryable(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.LLM_MAX_RETRIES = 2
    fake_openai.script_chat(*[Fail(500, retry_after=0.01)] * 3)
    _, socket = await user_and_socket(make_user, connect)
    await socket.send("message.send", client_message_id="c1", text="hi")
    frames = await socket.receive_until("assistant.failed")
    assert (frames[-1]["code"], frames[-1]["retryable"]) == ("upstream_error", True)
    assert len(fake_openai.chat_requests()) == 3
    answer = await Message.objects.aget(pk=frames[-1]["message_id"])
    assert (answer.status, answer.error_code) == ("failed", "upstream_error")
    # Nothing is stuck: the user can send again at once.
    await socket.send(
        "message.send",
        conversation_id=frames[0]["conversation_id"],
        client_message_id="c2",
        text="again",
    )
    assert (await socket.receive_until("assistant.completed"))[-1]["status"] == "complete"


async def test_a_turn_over_its_time_limit_fails_with_turn_timeout(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.TURN_TIMEOUT_SECONDS = 0.5
    fake_openai.script_chat(Hang(5))
    _, socket = await user_and_socket(make_user, connect)
    await socket.send("message.send", client_message_id="c1", text="hi")
    frames = await socket.receive_until("assistant.failed")
    assert frames[-1]["code"] == "turn_timeout"
    assert (await Message.objects.aget(pk=frames[-1]["message_id"])).status == "failed"


async def test_tool_calls_over_the_limit_are_refused_and_the_model_is_told(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.MAX_TOOL_CALLS_PER_TURN = 1
    fake_openai.script_chat(
        Reply(
            text="Two pictures.",
            tool_calls=[
                ToolCall(arguments={"prompt": "a cat"}),
                ToolCall(arguments={"prompt": "a dog"}),
            ],
        ),
        Reply(text="Only one, sorry."),
    )
    _, socket = await user_and_socket(make_user, connect)
    await socket.send("message.send", client_message_id="c1", text="draw two")
    frames = await socket.receive_until("assistant.completed")
    outcomes = [
        (f["type"], f.get("error", {}).get("code"))
        for f in frames
        if f["type"] in ("tool.completed", "tool.failed")
    ]
    assert outcomes == [("tool.completed", None), ("tool.failed", "tool_limit")]
    follow_up = fake_openai.chat_requests()[-1].body
    assert "tools" not in follow_up  # no more tools offered once the budget is spent
    assert "Too many images" in follow_up["messages"][-1]["content"]


async def test_an_oversized_frame_gets_a_typed_error_and_nothing_is_stored(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.MAX_FRAME_BYTES = 1024
    _, socket = await user_and_socket(make_user, connect)
    await socket.send("message.send", client_message_id="big", text="x" * 2000)
    frame = await socket.receive()
    assert (frame["code"], frame["ref"]) == ("frame_too_large", "big")
    assert await Message.objects.acount() == 0
    await socket.send("ping", id=1)
    assert (await socket.receive())["type"] == "pong"


async def test_sending_too_many_messages_a_minute_is_rate_limited(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any, monkeypatch: Any
) -> None:
    settings.MESSAGES_PER_MINUTE = 2
    minute = (time.time() // 60) * 60 + 1  # one one-minute window, whatever the clock says
    monkeypatch.setattr(limits, "now", lambda: minute)
    user, socket = await user_and_socket(make_user, connect)
    other_tab = await connect(user)
    for key in ("c1", "c2"):
        await socket.send("message.send", client_message_id=key, text="hi")
        await socket.receive_until("assistant.completed")
    await other_tab.send("message.send", client_message_id="c3", text="hi")
    frame = await other_tab.receive()
    assert (frame["code"], frame["ref"]) == ("rate_limited", "c3")
    assert "2 messages a minute" in frame["message"]
    assert not await Message.objects.filter(client_message_id="c3").aexists()


async def test_a_flood_of_frames_is_cut_off_with_a_typed_error(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.FRAMES_PER_10_SECONDS = 10
    _, socket = await user_and_socket(make_user, connect)
    for i in range(12):
        await socket.send("ping", id=i)
    frames = [await socket.receive() for _ in range(12)]
    assert [f["type"] for f in frames] == ["pong"] * 10 + ["error"] * 2
    assert frames[-1]["code"] == "rate_limited"


async def test_a_stale_answer_is_marked_interrupted_and_its_followers_are_told(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    user, socket = await user_and_socket(make_user, connect)
    conversation = await Conversation.objects.acreate(user=user)
    question = await conversation.messages.acreate(role="user", text="hi")
    answer = await conversation.messages.acreate(
        role="assistant",
        status="streaming",
        reply_to=question,
        text="Half an ans",
        heartbeat_at=timezone.now() - timedelta(minutes=5),
    )
    await ToolInvocation.objects.acreate(message=answer, call_id="c", name="generate_image")
    await socket.send(
        "conversation.subscribe",
        conversation_id=str(conversation.pk),
        message_id=answer.pk,
        offset=4,
    )
    assert (await socket.receive())["status"] == "streaming"

    assert await runtime.sweep_stale_turns() == 1
    frames = await socket.receive_until("assistant.failed")
    assert frames[-1]["code"] == "interrupted" and "Half an ans" in frames[-1]["html"]
    await answer.arefresh_from_db()
    assert (answer.status, answer.text) == ("interrupted", "Half an ans")
    assert (await ToolInvocation.objects.aget()).status == "failed"
    assert await runtime.sweep_stale_turns() == 0


async def test_a_live_answer_is_not_taken_for_a_dead_one(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    # The stale limit leaves room for a heartbeat late on a loaded machine (0.3 s
    # was missed once in CI, PostgreSQL + Redis); the answer outlives it twice over.
    settings.CHECKPOINT_SECONDS, settings.STALE_TURN_SECONDS = 0.1, 1.0
    fake_openai.script_chat(Reply(tokens=TOKENS, token_delay=0.06))  # 2.4 s
    _, socket = await user_and_socket(make_user, connect)
    await socket.send("message.send", client_message_id="c1", text="hi")
    accepted = await socket.receive()
    # A sweep at every delta, over the 2.4 s the answer streams.
    while (frame := await socket.receive())["type"] != "assistant.completed":
        assert await runtime.sweep_stale_turns() == 0
    frames = [frame]
    assert text_of(socket.frames, accepted["assistant_message_id"]) == UPSTREAM
    assert frames[-1]["status"] == "complete"


async def test_an_api_token_authenticates_a_program_and_a_revoked_one_is_refused(
    make_user: Any, fake_openai: Any
) -> None:
    user = await database_sync_to_async(make_user)()
    token, raw = await database_sync_to_async(ApiToken.issue)(user, "cli")

    connected, socket = await open_socket(
        origin="", headers=[(b"authorization", f"Bearer {raw}".encode())]
    )
    assert connected
    ready = await socket.receive()
    assert (ready["type"], ready["user"]) == ("session.ready", user.username)
    await socket.send("message.send", client_message_id="c1", text="hi")
    assert (await socket.receive_until("assistant.completed"))[-1]["status"] == "complete"
    await socket.close()
    await token.arefresh_from_db()
    assert token.last_used_at is not None

    await database_sync_to_async(token.revoke)()
    for bad in (raw, raw + "x", "cit_nope"):
        connected, socket = await open_socket(
            origin="", headers=[(b"authorization", f"Bearer {bad}".encode())]
        )
        assert (await socket.receive())["code"] == "unauthenticated"
        assert await socket.communicator.receive_output() == {
            "type": "websocket.close",
            "code": 4401,
        }
    # A stored token is only ever a digest.
    assert raw not in str(await ApiToken.objects.values_list("digest", "hint").aget())


async def test_regenerate_replaces_the_last_answer_and_keeps_it_as_a_version(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any
) -> None:
    from conversations.models import GeneratedImage

    user, socket = await user_and_socket(make_user, connect)
    other_tab = await connect(user)
    await socket.send("message.send", client_message_id="c1", text="draw a lighthouse at dusk")
    first = await socket.receive_until("assistant.completed")
    conversation_id, old_answer = first[0]["conversation_id"], first[0]["assistant_message_id"]
    old_image = await GeneratedImage.objects.aget()
    await other_tab.send("conversation.subscribe", conversation_id=conversation_id)
    await other_tab.receive_until("assistant.completed")

    fake_openai.script_chat(Reply(text="A different answer."))
    await socket.send("turn.regenerate", conversation_id=conversation_id)
    frames = await socket.receive_until("assistant.completed")
    regenerating = frames[0]
    assert regenerating["type"] == "turn.regenerating"
    assert regenerating["replaces_message_id"] == old_answer
    new_answer = regenerating["assistant_message_id"]
    assert text_of(frames, new_answer) == "A different answer."
    seen_elsewhere = await other_tab.receive_until("assistant.completed")
    assert seen_elsewhere[0]["type"] == "turn.regenerating"
    assert text_of(seen_elsewhere, new_answer) == "A different answer."

    assert regenerating["versions"] == [old_answer, new_answer]
    # The old answer stays, off the active branch, with its image (tests/test_branches.py).
    assert not (await Message.objects.aget(pk=old_answer)).active
    assert await GeneratedImage.objects.filter(pk=old_image.pk).aexists()
    assert (local_storage / old_image.file.name).exists()
    # The model was asked the same question again, without the replaced answer.
    asked = fake_openai.chat_requests()[-1].body["messages"]
    assert asked[-1] == {"role": "user", "content": "draw a lighthouse at dusk"}
    assert [m["role"] for m in asked] == ["system", "user"]


async def test_regenerate_needs_an_answer_to_replace(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    user, socket = await user_and_socket(make_user, connect)
    conversation = await Conversation.objects.acreate(user=user)
    await socket.send("turn.regenerate", conversation_id=str(conversation.pk))
    assert (await socket.receive())["code"] == "nothing_to_regenerate"


async def test_the_first_exchange_gives_the_conversation_a_title(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.LLM_TITLES = True
    fake_openai.script_chat(Reply(text="Lighthouses are tall."), Reply(text='"Tall Lighthouses."'))
    _, socket = await user_and_socket(make_user, connect)
    await socket.send("message.send", client_message_id="c1", text="tell me about lighthouses")
    accepted = (await socket.receive_until("message.accepted"))[-1]
    assert accepted["conversation"]["title"] == "tell me about lighthouses"  # until the model's
    updated = (await socket.receive_until("conversation.updated"))[-1]
    assert updated["title"] == "Tall Lighthouses"
    conversation = await Conversation.objects.aget(pk=accepted["conversation_id"])
    assert conversation.title == "Tall Lighthouses"
    title_request = fake_openai.chat_requests()[-1].body
    assert "stream" not in title_request or title_request["stream"] is False
    assert "Lighthouses are tall." in title_request["messages"][-1]["content"]

    await socket.send(
        "message.send",
        conversation_id=accepted["conversation_id"],
        client_message_id="c2",
        text="and towers?",
    )
    await socket.receive_until("assistant.completed")
    await asyncio.sleep(0.2)
    assert len(fake_openai.chat_requests()) == 3  # no second title request
