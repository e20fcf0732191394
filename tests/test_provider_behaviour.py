"""What OpenAI-compatible servers do that OpenAI does not, through the real socket.

Each case is a behaviour seen on a real server (llama.cpp's, LiteLLM's, Azure's),
played by the scriptable fake over real HTTP, so the whole turn (database,
frames, what goes back to the model) is checked, not only the stream reader.
"""

from __future__ import annotations

import base64
import ipaddress
import socket as sockets
from typing import Any

import pytest
from channels.db import database_sync_to_async

from conversations import llm
from conversations.models import Conversation, GeneratedImage, Message
from offline_model import Fail, ImageReply, Reply, ToolCall, render_image
from tests.conftest import text_of

pytestmark = pytest.mark.django_db(transaction=True)


async def ask(connect: Any, make_user: Any, text: str = "hello", **send: Any) -> tuple[Any, list]:
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)
    await socket.send("message.send", client_message_id="c1", text=text, **send)
    return socket, await socket.receive_until("assistant.completed", "assistant.failed")


async def test_an_empty_answer_is_a_retryable_failure_not_an_empty_bubble(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(text=""), Reply(text=""))
    _, frames = await ask(connect, make_user)
    assert frames[-1]["type"] == "assistant.failed"
    assert frames[-1]["code"] == "upstream_empty" and frames[-1]["retryable"] is True
    assert len(fake_openai.chat_requests()) == 2  # streamed, then once without streaming
    answer = await Message.objects.aget(pk=frames[-1]["message_id"])
    assert answer.status == "failed" and answer.error_code == "upstream_empty"


async def test_a_length_ending_keeps_the_text_marks_it_truncated_and_continue_carries_it_on(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(
        Reply(tokens=["The ", "lighthouse ", "stood "], finish_reason="length"),
        Reply(tokens=["on ", "the ", "cliff."]),
    )
    socket, frames = await ask(connect, make_user, "describe a lighthouse")
    completed = frames[-1]
    assert completed["type"] == "assistant.completed"
    assert completed["status"] == "complete" and completed["truncated"] is True
    answer_id = completed["message_id"]
    assert (await Message.objects.aget(pk=answer_id)).truncated

    await socket.send("turn.continue", conversation_id=completed["conversation_id"])
    more = await socket.receive_until("assistant.completed", "assistant.failed", "error")
    assert more[-1]["type"] == "assistant.completed" and more[-1]["truncated"] is False
    deltas = [f for f in more if f["type"] == "assistant.delta"]
    assert deltas[0]["offset"] == len("The lighthouse stood ")  # the same answer grows
    assert text_of(frames + more, answer_id) == "The lighthouse stood on the cliff."
    answer = await Message.objects.aget(pk=answer_id)
    assert answer.text == "The lighthouse stood on the cliff." and not answer.truncated
    # The model saw what it had written, then was asked to go on.
    sent = fake_openai.chat_requests()[-1].body["messages"]
    assert sent[-2] == {"role": "assistant", "content": "The lighthouse stood "}
    assert sent[-1] == {"role": "user", "content": llm.CONTINUE_PROMPT}


async def test_continue_is_refused_when_the_answer_was_not_cut_off(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(text="All said."))
    socket, frames = await ask(connect, make_user)
    await socket.send("turn.continue", conversation_id=frames[-1]["conversation_id"])
    error = (await socket.receive_until("error"))[-1]
    assert error["code"] == "nothing_to_continue"
    assert len(fake_openai.chat_requests()) == 1


async def test_a_content_filter_ending_is_a_typed_failure_that_keeps_the_text(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(tokens=["Well, ", "that "], finish_reason="content_filter"))
    _, frames = await ask(connect, make_user)
    assert frames[-1]["type"] == "assistant.failed"
    assert frames[-1]["code"] == "content_filtered" and frames[-1]["retryable"] is False
    answer = await Message.objects.aget(pk=frames[-1]["message_id"])
    assert answer.text == "Well, that "


async def test_tool_calls_returned_when_none_were_offered_do_not_loop(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.MAX_TOOL_CALLS_PER_TURN = 1
    settings.MAX_MODEL_ROUNDS = 3
    # A server that calls the tool whatever it is offered, for ever.
    fake_openai.script_chat(
        *[Reply(text=f"Round {n}. ", tool_calls=[ToolCall()]) for n in range(10)]
    )
    _, frames = await ask(connect, make_user, "draw")
    assert frames[-1]["type"] == "assistant.completed"
    requests = fake_openai.chat_requests()
    assert len(requests) == 2  # one with the tool, one without; its calls are not run
    assert "tools" in requests[0].body and "tools" not in requests[1].body
    # Said out loud where tools are offered: llama-cpp-python ignores them otherwise.
    assert requests[0].body["tool_choice"] == "auto" and "tool_choice" not in requests[1].body
    assert [f["type"] for f in frames].count("tool.started") == 1
    assert await GeneratedImage.objects.acount() == 1


async def test_no_answer_makes_more_model_requests_than_the_bound(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.MAX_TOOL_CALLS_PER_TURN = 10
    settings.MAX_MODEL_ROUNDS = 3
    fake_openai.script_chat(*[Reply(tool_calls=[ToolCall()]) for _ in range(10)])
    _, frames = await ask(connect, make_user, "draw")
    assert frames[-1]["type"] == "assistant.completed"
    requests = fake_openai.chat_requests()
    assert len(requests) == 3
    assert "tools" not in requests[-1].body  # the last round may only answer in words


async def test_after_a_tool_round_without_text_the_history_has_empty_content_not_null(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    # llama.cpp's server refuses "content": null with HTTP 500, for ever after.
    fake_openai.script_chat(
        Reply(tool_calls=[ToolCall(arguments={"prompt": "a fox"})]),
        Reply(text="Here is your fox."),
        Reply(text="It is orange."),
    )
    socket, frames = await ask(connect, make_user, "draw a fox")
    live_round = fake_openai.chat_requests()[1].body["messages"]
    assert [m["content"] for m in live_round if m.get("tool_calls")] == [""]

    await socket.send(
        "message.send",
        conversation_id=frames[-1]["conversation_id"],
        client_message_id="c2",
        text="what colour?",
    )
    await socket.receive_until("assistant.completed")
    rebuilt = fake_openai.chat_requests()[2].body["messages"]
    assert all(message["content"] is not None for message in rebuilt)
    assert all(isinstance(m["content"], str) for m in rebuilt if m["role"] == "tool")


async def test_a_follow_up_with_nothing_to_add_after_the_image_completes(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(tool_calls=[ToolCall()]), Reply(text=""))
    _, frames = await ask(connect, make_user, "draw")
    assert frames[-1]["type"] == "assistant.completed" and frames[-1]["status"] == "complete"
    assert any(f["type"] == "tool.completed" for f in frames)


async def test_answers_send_max_tokens_when_configured_and_reasoning_models_get_the_new_name(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.MAX_OUTPUT_TOKENS = 500
    fake_openai.script_chat(Reply(text="ok"))
    await ask(connect, make_user)
    body = fake_openai.chat_requests()[-1].body
    assert body["max_tokens"] == 500 and "max_completion_tokens" not in body

    settings.CHAT_MODEL = "o4-mini"
    fake_openai.reset()
    fake_openai.script_chat(Reply(text="ok"))
    user = await database_sync_to_async(make_user)("bob")
    socket = await connect(user)
    await socket.send("message.send", client_message_id="c9", text="hi")
    await socket.receive_until("assistant.completed")
    body = fake_openai.chat_requests()[-1].body
    assert body["max_completion_tokens"] == 500 and "max_tokens" not in body


async def test_the_title_request_is_bounded_and_its_markdown_is_cleaned(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.LLM_TITLES = True
    fake_openai.script_chat(
        Reply(text="Lighthouses are tall."), Reply(text="**Title: Tall Towers.**")
    )
    socket, frames = await ask(connect, make_user, "tell me about lighthouses")
    updated = (await socket.receive_until("conversation.updated"))[-1]
    assert updated["title"] == "Tall Towers"
    assert (
        await Conversation.objects.aget(pk=frames[-1]["conversation_id"])
    ).title == "Tall Towers"
    title_request = fake_openai.chat_requests()[-1].body
    assert title_request["max_tokens"] <= 32


async def test_images_are_requested_without_response_format_by_default(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any, settings: Any
) -> None:
    # The fake's image URL is on loopback, which only an allow-list lets through.
    settings.IMAGE_FETCH_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.1/32")]
    fake_openai.script_images(ImageReply(response_format="url"))  # a gateway may answer a URL
    _, frames = await ask(connect, make_user, "draw a lighthouse at dusk")
    assert "response_format" not in fake_openai.image_requests()[0].body
    assert any(f["type"] == "tool.completed" for f in frames)
    assert await GeneratedImage.objects.acount() == 1


async def test_dall_e_models_are_asked_for_b64_json(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.IMAGE_MODEL = "dall-e-3"
    settings.IMAGE_SIZE = "1024x1024"
    _, frames = await ask(connect, make_user, "draw a lighthouse at dusk")
    assert fake_openai.image_requests()[0].body["response_format"] == "b64_json"
    assert any(f["type"] == "tool.completed" for f in frames)


async def test_a_parameter_the_gateway_refuses_is_dropped_and_the_image_made(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.IMAGE_RESPONSE_FORMAT = "b64_json"
    fake_openai.script_images(
        Fail(
            400,
            "litellm.UnsupportedParamsError: openai does not support parameters: "
            "['response_format'], for model=my-image. To drop these, set "
            "`litellm.drop_params=True`",
            type="invalid_request_error",
        ),
        ImageReply(),
    )
    _, frames = await ask(connect, make_user, "draw a lighthouse at dusk")
    first, second = (r.body for r in fake_openai.image_requests())
    assert first["response_format"] == "b64_json" and "response_format" not in second
    assert any(f["type"] == "tool.completed" for f in frames)


async def test_a_provider_without_an_images_api_is_a_clear_final_tool_error(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    raw = "404 page not found: /v1/images/generations (internal-host-7:8080)"
    fake_openai.script_images(Fail(404, raw, type="not_found"))
    _, frames = await ask(connect, make_user, "draw a lighthouse at dusk")
    failed = next(f for f in frames if f["type"] == "tool.failed")
    assert failed["error"]["code"] == "images_not_supported"
    assert "try again" not in failed["error"]["message"]
    # The provider's own words reach neither the user nor the model.
    assert "internal-host-7" not in failed["error"]["message"]
    tool_result = fake_openai.chat_requests()[-1].body["messages"][-1]
    assert tool_result["role"] == "tool" and "internal-host-7" not in tool_result["content"]


async def test_a_rejected_image_request_does_not_show_the_providers_text(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    raw = "Invalid prompt: upstream gateway=10.0.0.12 key=sk-live-abc rejected"
    fake_openai.script_images(Fail(400, raw, type="invalid_request_error"))
    _, frames = await ask(connect, make_user, "draw a lighthouse at dusk")
    failed = next(f for f in frames if f["type"] == "tool.failed")
    assert failed["error"]["code"] == "image_rejected"
    assert "sk-live" not in failed["error"]["message"] and "10.0.0.12" not in str(frames)


def closed_port() -> int:
    with sockets.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_server_is_named_as_such_not_as_slow(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{closed_port()}/v1"
    settings.LLM_MAX_RETRIES = 0
    _, frames = await ask(connect, make_user)
    assert frames[-1]["code"] == "upstream_unreachable"
    assert "reached" in frames[-1]["message"]


async def test_an_unknown_model_is_a_final_failure_that_names_it(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(
        Fail(
            404,
            "The model `gpt-test` does not exist",
            type="invalid_request_error",
            code="model_not_found",
        )
    )
    _, frames = await ask(connect, make_user)
    assert frames[-1]["code"] == "upstream_model_not_found"
    assert frames[-1]["retryable"] is False and "gpt-test" in frames[-1]["message"]


async def test_a_refused_key_is_a_final_failure(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(
        Fail(401, "Incorrect API key provided: sk-test", type="invalid_request_error")
    )
    _, frames = await ask(connect, make_user)
    assert frames[-1]["code"] == "upstream_auth" and frames[-1]["retryable"] is False
    assert "sk-test" not in frames[-1]["message"]


async def test_a_stream_that_stalls_mid_answer_is_named_stalled_and_keeps_its_text(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.LLM_TIMEOUT_SECONDS = 0.5
    fake_openai.script_chat(Reply(tokens=["Once ", "upon"], token_delay=3))
    _, frames = await ask(connect, make_user)
    assert frames[-1]["code"] == "upstream_stalled"
    assert (await Message.objects.aget(pk=frames[-1]["message_id"])).text == "Once "


async def test_a_context_overflow_error_says_to_start_a_new_chat(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(
        Fail(
            400,
            "This model's maximum context length is 4096 tokens.",
            type="invalid_request_error",
            code="context_length_exceeded",
        )
    )
    _, frames = await ask(connect, make_user)
    assert frames[-1]["code"] == "context_too_long" and frames[-1]["retryable"] is False


async def test_azure_api_version_endpoints_are_called_by_deployment_with_an_api_key_header(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.AZURE_OPENAI_API_VERSION = "2024-10-21"
    settings.OPENAI_BASE_URL = settings.OPENAI_IMAGE_BASE_URL = fake_openai.base_url.removesuffix(
        "/v1"
    )
    settings.CHAT_MODEL = "my-chat-deployment"
    settings.IMAGE_MODEL = "my-image-deployment"
    _, frames = await ask(connect, make_user, "draw a lighthouse at dusk")
    assert frames[-1]["type"] == "assistant.completed"
    assert any(f["type"] == "tool.completed" for f in frames)
    chat, image = fake_openai.chat_requests()[0], fake_openai.image_requests()[0]
    assert chat.path == "/openai/deployments/my-chat-deployment/chat/completions"
    assert image.path == "/openai/deployments/my-image-deployment/images/generations"
    assert chat.query == image.query == "api-version=2024-10-21"
    assert chat.headers["api-key"] == "sk-test" and "authorization" not in chat.headers


async def test_a_server_that_cannot_stream_a_tool_call_is_asked_again_without_streaming(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any
) -> None:
    # llama-cpp-python answers a streamed request in which the model chose a
    # tool with 200 and an empty body; without streaming it returns the call.
    fake_openai.script_chat(
        Reply(text=""),
        Reply(tool_calls=[ToolCall(arguments={"prompt": "a lighthouse at dusk"})]),
        Reply(text="Here is your lighthouse."),
    )
    _, frames = await ask(connect, make_user, "draw a lighthouse at dusk")
    assert frames[-1]["type"] == "assistant.completed"
    assert any(f["type"] == "tool.completed" for f in frames)
    first, again, follow_up = (r.body for r in fake_openai.chat_requests())
    assert first["stream"] is True and "stream" not in again and "tools" in again
    assert follow_up["stream"] is True
    assert text_of(frames, frames[-1]["message_id"]) == "Here is your lighthouse."
    assert await GeneratedImage.objects.acount() == 1


@pytest.mark.parametrize(
    "b64_json",
    [
        "iVBORw0KGgo!",  # a character outside the alphabet
        "iVBORw0K\nGgo=",  # whitespace inside
        "=iVBORw0KGgo",  # padding first
        "iVBORw0KGgo",  # cut short (not a multiple of four)
        "iVBORw0KGg===",  # too much padding
        "QUJDé",  # a letter outside ASCII
        "🙂🙂🙂🙂",  # and outside Latin-1
    ],
)
async def test_base64_a_provider_garbled_is_refused_as_corrupt(b64_json: str) -> None:
    with pytest.raises(llm.ImageAPIError) as refused:
        await llm._picture(b64_json, None, None)
    assert refused.value.code == "image_corrupt"


async def test_base64_a_provider_sent_whole_is_the_picture_byte_for_byte() -> None:
    png = render_image("a lighthouse", 1024, 1024)
    picture = await llm._picture(base64.b64encode(png).decode("ascii"), None, "revised")
    assert picture.data == png and picture.revised_prompt == "revised"
