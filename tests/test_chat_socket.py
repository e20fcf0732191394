"""The chat websocket over the real ASGI app, a real database and the OpenAI fake."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async

from conversations.models import Conversation, GeneratedImage, Message, ToolInvocation
from offline_model import Fail, ImageReply, Reply
from tests.conftest import open_socket, text_of

pytestmark = pytest.mark.django_db(transaction=True)


def kinds(frames: list[dict[str, Any]]) -> list[str]:
    """Frame types in order, without deltas and without the echo of our own message
    (`message.created` goes to the whole group, so it may come before or after
    our `message.accepted`)."""
    return [f["type"] for f in frames if f["type"] not in ("assistant.delta", "message.created")]


async def test_it_refuses_an_anonymous_socket(db: Any) -> None:
    connected, socket = await open_socket(user=None)
    assert connected  # accepted so that the close code reaches the client
    frame = await socket.receive()
    assert frame == {
        "type": "error",
        "code": "unauthenticated",
        "message": "Log in first.",
        "ref": None,
    }
    output = await socket.communicator.receive_output()
    assert output == {"type": "websocket.close", "code": 4401}


async def test_a_socket_whose_server_shuts_down_is_closed_for_the_client_to_reconnect(
    make_user: Any,
) -> None:
    """daphne cancels every application instance as it shuts down (SIGTERM) and
    leaves the sockets open: one left so would swallow what its client sends."""
    user = await database_sync_to_async(make_user)()
    connected, socket = await open_socket(user)
    assert connected
    assert (await socket.receive())["type"] == "session.ready"

    socket.communicator.future.cancel()  # what daphne's kill_all_applications does
    await asyncio.wait([socket.communicator.future], timeout=5)

    assert socket.communicator.future.cancelled()
    output = socket.communicator.output_queue.get_nowait()
    assert output == {"type": "websocket.close", "code": 4503}  # docs/protocol.md: reconnect


async def test_it_refuses_a_foreign_origin(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    connected, _ = await open_socket(user, origin="https://evil.example")
    assert not connected


async def test_a_full_turn_streams_frames_in_order_and_is_stored(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(tokens=["Hello", " there", ", how", " can I", " help?"]))
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)

    await socket.send("message.send", conversation_id=None, client_message_id="c1", text="Hi!")
    frames = await socket.receive_until("assistant.completed")

    assert kinds(frames) == ["message.accepted", "assistant.started", "assistant.completed"]
    accepted, completed = frames[0], frames[-1]
    answer_id = accepted["assistant_message_id"]
    assert text_of(frames, answer_id) == "Hello there, how can I help?"
    assert completed["status"] == "complete"
    assert "Hello there, how can I help?" in completed["html"]
    assert completed["usage"]["completion_tokens"] > 0

    conversation = await Conversation.objects.aget(pk=accepted["conversation_id"])
    assert conversation.user_id == user.pk
    assert conversation.title == "Hi!"
    messages = [m async for m in conversation.messages.order_by("id")]
    assert [(m.role, m.status, m.text) for m in messages] == [
        ("user", "complete", "Hi!"),
        ("assistant", "complete", "Hello there, how can I help?"),
    ]
    # The model got the system prompt and the user's words.
    sent = fake_openai.chat_requests()[-1].body
    assert sent["messages"][-1] == {"role": "user", "content": "Hi!"}
    assert sent["stream"] is True


async def test_a_drawing_turn_stores_the_image_and_the_tool_invocation(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any
) -> None:
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)

    await socket.send("message.send", client_message_id="d1", text="draw a lighthouse at dusk")
    frames = await socket.receive_until("assistant.completed")

    assert kinds(frames) == [
        "message.accepted",
        "assistant.started",
        "tool.started",
        "tool.completed",
        "assistant.completed",
    ]
    started, completed_tool = (
        frames[[f["type"] for f in frames].index("tool.started")],
        next(f for f in frames if f["type"] == "tool.completed"),
    )
    assert started["prompt"] == "a lighthouse at dusk"
    image = await GeneratedImage.objects.select_related("tool_invocation").aget(
        pk=completed_tool["image"]["id"]
    )
    assert completed_tool["image"]["url"] == f"/images/{image.id}/"
    assert (image.width, image.height, image.format) == (256, 256, "png")
    assert image.prompt == "a lighthouse at dusk"
    assert image.user_id == user.pk
    stored = local_storage / image.file.name
    assert stored.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.bytes == stored.stat().st_size
    assert image.tool_invocation.status == ToolInvocation.Status.COMPLETE
    assert image.tool_invocation.result["image_id"] == str(image.id)

    answer = await Message.objects.aget(pk=frames[0]["assistant_message_id"])
    streamed = text_of(frames, answer.pk)
    assert answer.text == streamed
    assert streamed.startswith("Sure")  # preamble before the tool call
    assert "a lighthouse at dusk" in streamed[image.tool_invocation.text_offset :]  # follow-up
    assert f'src="/images/{image.id}/"' in frames[-1]["html"]


async def test_the_follow_up_request_carries_no_image_bytes_or_urls(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_images(ImageReply(revised_prompt="A tall lighthouse, warm dusk light"))
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)
    await socket.send("message.send", client_message_id="d1", text="draw a lighthouse at dusk")
    await socket.receive_until("assistant.completed")
    # A second turn rebuilds the history from the database.
    await socket.send(
        "message.send",
        conversation_id=socket.frames[1]["conversation_id"],
        client_message_id="d2",
        text="thanks!",
    )
    await socket.receive_until("assistant.completed")

    image = await GeneratedImage.objects.aget()
    follow_up, next_turn = fake_openai.chat_requests()[1:3]
    for request in (follow_up, next_turn):
        raw = json.dumps(request.body)
        assert "iVBORw0KGgo" not in raw  # the base64 signature of a PNG
        assert "base64" not in raw
        assert image.file.name not in raw
        assert "/images/" not in raw and "http" not in raw
        tool_message = next(m for m in request.body["messages"] if m["role"] == "tool")
        assert json.loads(tool_message["content"]) == {
            "status": "ok",
            "image_id": str(image.id),
            "prompt": "a lighthouse at dusk",
            "revised_prompt": "A tall lighthouse, warm dusk light",
            "images_left_today": 49,
        }


async def test_another_users_conversation_is_refused_and_leaks_nothing(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    alice, mallory = (
        await database_sync_to_async(make_user)("alice"),
        await database_sync_to_async(make_user)("mallory"),
    )
    conversation = await Conversation.objects.acreate(user=alice, title="secret plans")
    socket = await connect(mallory)

    for kind, extra in [
        ("message.send", {"client_message_id": "m1", "text": "hi"}),
        ("conversation.subscribe", {}),
        ("turn.cancel", {}),
    ]:
        await socket.send(kind, conversation_id=str(conversation.pk), **extra)
        frame = await socket.receive()
        assert frame["type"] == "error" and frame["code"] == "not_found", frame
        assert "secret" not in json.dumps(frame)
    # A random id gets exactly the same answer as a foreign one.
    await socket.send("conversation.subscribe", conversation_id=str(uuid.uuid4()))
    assert (await socket.receive())["code"] == "not_found"
    assert await Message.objects.filter(conversation=conversation).acount() == 0
    assert fake_openai.chat_requests() == []


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ('{"type": "launch.missiles"}', "unknown_type"),
        ('{"type": "message.send", "client_message_id": "x", "text": ""}', "bad_frame"),
        ('{"type": "message.send", "text": "hi"}', "bad_frame"),
        ('{"type": "conversation.subscribe", "conversation_id": "nope"}', "bad_frame"),
    ],
)
async def test_malformed_frames_get_a_typed_error_and_the_socket_stays_usable(
    make_user: Any, connect: Any, fake_openai: Any, raw: str, code: str
) -> None:
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)
    await socket.communicator.send_to(text_data=raw)
    frame = await socket.receive()
    assert (frame["type"], frame["code"]) == ("error", code)
    await socket.send("ping", id=7)
    assert await socket.receive() == {"type": "pong", "id": 7}


async def test_an_oversized_message_is_refused_with_its_reference(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.MAX_MESSAGE_CHARS = 100
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)
    await socket.send("message.send", client_message_id="big", text="x" * 101)
    frame = await socket.receive()
    assert (frame["code"], frame["ref"]) == ("message_too_long", "big")
    assert await Message.objects.acount() == 0


async def test_a_failed_image_becomes_a_tool_error_and_the_turn_goes_on(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any
) -> None:
    fake_openai.script_images(
        Fail(
            400,
            "Your request was rejected by our safety system.",
            code="moderation_blocked",
            type="image_generation_user_error",
        )
    )
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)
    await socket.send("message.send", client_message_id="d1", text="draw a lighthouse at dusk")
    frames = await socket.receive_until("assistant.completed")

    failed = next(f for f in frames if f["type"] == "tool.failed")
    assert failed["error"]["code"] == "image_refused"
    assert "content policy" in failed["error"]["message"]
    assert frames[-1]["status"] == "complete"
    assert "couldn't make that image" in text_of(frames, frames[0]["assistant_message_id"])
    invocation = await ToolInvocation.objects.aget()
    assert invocation.status == "failed"
    assert await GeneratedImage.objects.acount() == 0
    assert not local_storage.exists() or not any(local_storage.rglob("*.png"))
    # The model was told, in words, why there is no picture.
    tool_message = fake_openai.chat_requests()[-1].body["messages"][-1]
    assert tool_message["role"] == "tool" and "content policy" in tool_message["content"]


async def test_a_stream_cut_keeps_the_partial_text_and_marks_the_answer_failed(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(tokens=["Once", " upon", " a", " time"], cut_after=2))
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)
    await socket.send("message.send", client_message_id="c1", text="tell me a story")
    frames = await socket.receive_until("assistant.failed")
    failed = frames[-1]
    assert failed["code"] == "upstream_stream_cut"
    assert failed["retryable"] is True
    answer = await Message.objects.aget(pk=failed["message_id"])
    assert answer.status == "failed"
    assert answer.text == text_of(frames, answer.pk) == "Once upon"


async def test_a_resend_with_the_same_client_message_id_does_not_start_a_second_turn(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)
    await socket.send("message.send", client_message_id="same", text="Hi!")
    first = await socket.receive_until("assistant.completed")
    await socket.send("message.send", client_message_id="same", text="Hi!")
    again = await socket.receive_until("assistant.completed")

    assert again[0]["type"] == "message.accepted" and again[0]["duplicate"] is True
    assert again[0]["assistant_message_id"] == first[0]["assistant_message_id"]
    assert again[0]["conversation_id"] == first[0]["conversation_id"]
    assert await Message.objects.acount() == 2
    assert len(fake_openai.chat_requests()) == 1


async def test_closed_sockets_leave_nothing_behind_in_the_channel_layer(
    make_user: Any, fake_openai: Any
) -> None:
    from channels.layers import get_channel_layer

    from chatimg.layers import FastInMemoryChannelLayer
    from tests.conftest import ChatSocket

    layer = get_channel_layer()
    if not isinstance(layer, FastInMemoryChannelLayer):
        pytest.skip("inspects the in-memory layer's queues (the Redis run uses another layer)")
    user = await database_sync_to_async(make_user)()
    conversation = await Conversation.objects.acreate(user=user)
    # The first socket also starts the process's turn-control receiver, which stays.
    connected, first = await open_socket(user)
    await first.receive()
    await first.close()
    before = (len(layer.channels), sum(len(g) for g in layer.groups.values()))

    sockets: list[ChatSocket] = []
    for _ in range(3):
        connected, socket = await open_socket(user)
        assert connected
        await socket.receive()  # session.ready
        await socket.send("conversation.subscribe", conversation_id=str(conversation.pk))
        assert (await socket.receive())["type"] == "conversation.state"
        sockets.append(socket)
    # Each socket is in the conversation's group and in its user's access group.
    assert sum(len(g) for g in layer.groups.values()) == before[1] + 6

    for socket in sockets:
        await socket.close()
    # A long-running process must not keep a queue or a membership per closed tab.
    assert (len(layer.channels), sum(len(g) for g in layer.groups.values())) == before
