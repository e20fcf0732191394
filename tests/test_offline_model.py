"""The built-in offline model, exercised over real HTTP with the real ``openai`` client.

These tests need neither Django nor a database, so they also run with ``-p no:django``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from PIL import Image

from offline_model import (
    ChatScript,
    Fail,
    Handler,
    Hang,
    ImageReply,
    OfflineModelServer,
    Reply,
    ToolCall,
    last_user_text,
    render_image,
)
from tests.waiting import within

REPO_ROOT = Path(__file__).resolve().parents[1]

GENERATE_IMAGE_TOOL = {
    "type": "function",
    "function": {
        "name": "generate_image",
        "description": "Draw a picture.",
        "parameters": {
            "type": "object",
            "properties": {"prompt": {"type": "string"}},
            "required": ["prompt"],
        },
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[OfflineModelServer]:
    with OfflineModelServer() as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_server(server: OfflineModelServer) -> Iterator[None]:
    server.reset()
    yield
    server.reset()


@pytest.fixture
async def client(server: OfflineModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key="offline", max_retries=0
    ) as async_client:
        yield async_client


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def stream_chat(client: openai.AsyncOpenAI, messages: list[dict[str, Any]], **kwargs: Any):
    stream = await client.chat.completions.create(
        model="offline-chat", messages=messages, stream=True, **kwargs
    )
    return [chunk async for chunk in stream]


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def content_chunks(chunks: list[Any]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


# -- chat: text ---------------------------------------------------------------------------


async def test_streamed_text_arrives_in_several_chunks_and_joins_to_the_expected_text(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    server.script_chat(Reply(text="Hello there, how are you today?"))

    chunks = await stream_chat(client, user("hi"))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(content_chunks(chunks)) >= 3
    assert text_of(chunks) == "Hello there, how are you today?"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].model == "offline-chat"


async def test_exact_tokens_are_streamed_one_chunk_each(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    server.script_chat(Reply(tokens=["Hel", "lo", " wor", "ld"]))

    chunks = await stream_chat(client, user("hi"))

    assert content_chunks(chunks) == ["Hel", "lo", " wor", "ld"]


async def test_the_default_reply_is_deterministic_and_quotes_the_user(
    client: openai.AsyncOpenAI,
) -> None:
    first = text_of(await stream_chat(client, user("What is the meaning of life?")))
    second = text_of(await stream_chat(client, user("What is the meaning of life?")))

    assert first == second
    assert "offline model" in first
    assert "What is the meaning of life?" in first
    assert "**" in first


async def test_user_content_may_be_a_list_of_parts(client: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "tell me a joke"}]}]

    assert "tell me a joke" in text_of(await stream_chat(client, messages))


async def test_a_drawing_request_without_the_tool_gets_a_plain_reply(
    client: openai.AsyncOpenAI,
) -> None:
    chunks = await stream_chat(client, user("draw a lighthouse at dusk"))

    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


# -- chat: tool calls ---------------------------------------------------------------------


async def test_a_drawing_request_produces_a_generate_image_tool_call(
    client: openai.AsyncOpenAI,
) -> None:
    chunks = await stream_chat(
        client, user("Please draw me a lighthouse at dusk!"), tools=[GENERATE_IMAGE_TOOL]
    )

    tool_deltas = [
        call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])
    ]
    first, *fragments = tool_deltas
    assert first.id.startswith("call_")
    assert first.type == "function"
    assert first.function.name == "generate_image"
    assert len(fragments) >= 2
    assert all(f.id is None and f.function.name is None and f.index == 0 for f in fragments)
    arguments = "".join(f.function.arguments for f in tool_deltas)
    assert json.loads(arguments) == {"prompt": "a lighthouse at dusk"}
    assert text_of(chunks) == "Sure, let me draw a lighthouse at dusk."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_scripted_tool_calls_keep_their_ids_and_indexes(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    server.script_chat(
        Reply(
            tool_calls=[
                ToolCall(arguments={"prompt": "one"}, id="call_a"),
                ToolCall(arguments='{"prompt": "two"}', id="call_b"),
            ]
        )
    )

    chunks = await stream_chat(client, user("two pictures"), tools=[GENERATE_IMAGE_TOOL])

    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for delta in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            call["arguments"] += delta.function.arguments or ""
    assert calls == {
        0: {"id": "call_a", "arguments": '{"prompt": "one"}'},
        1: {"id": "call_b", "arguments": '{"prompt": "two"}'},
    }


@pytest.mark.parametrize(
    ("tool_content", "expected"),
    [
        (
            json.dumps({"image_id": "img1", "prompt": "a red fox", "status": "ok"}),
            "Here is your picture of a red fox.",
        ),
        (
            json.dumps({"status": "error", "error": "the safety system said no"}),
            "Sorry, I couldn't make that image: the safety system said no",
        ),
        ("definitely not json", "definitely not json"),
    ],
)
async def test_the_follow_up_after_a_tool_message_reflects_its_result(
    client: openai.AsyncOpenAI, tool_content: str, expected: str
) -> None:
    messages = [
        *user("draw a red fox"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "generate_image", "arguments": '{"prompt": "a red fox"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": tool_content},
    ]

    chunks = await stream_chat(client, messages, tools=[GENERATE_IMAGE_TOOL])

    assert expected in text_of(chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_include_usage_adds_a_final_chunk_with_usage_and_no_choices(
    client: openai.AsyncOpenAI,
) -> None:
    chunks = await stream_chat(client, user("hi"), stream_options={"include_usage": True})

    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


async def test_usage_can_be_withheld_like_some_providers_do(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    server.script_chat(Reply(text="no usage here", usage=False))

    chunks = await stream_chat(client, user("hi"), stream_options={"include_usage": True})

    assert all(c.choices for c in chunks)


async def test_a_non_streaming_request_gets_a_whole_message(
    client: openai.AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model="offline-chat", messages=user("paint a forest at night"), tools=[GENERATE_IMAGE_TOOL]
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Sure, let me draw a forest at night."
    call = choice.message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"prompt": "a forest at night"}
    assert completion.usage.total_tokens > 0


# -- chat: failures -------------------------------------------------------------------------


async def test_a_scripted_429_surfaces_as_a_rate_limit_error_without_retries(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    server.script_chat(Fail(429, "Slow down.", code="rate_limit_exceeded", retry_after=7))

    with pytest.raises(openai.RateLimitError) as caught:
        await stream_chat(client, user("hi"))

    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "7"
    assert len(server.chat_requests()) == 1


async def test_a_500_followed_by_success_succeeds_with_one_retry(
    server: OfflineModelServer,
) -> None:
    # A short retry-after keeps the test fast; the client honours it instead of backing off.
    server.script_chat(Fail(500, retry_after=0.05), Reply(text="recovered"))

    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key="offline", max_retries=1
    ) as retrying:
        chunks = await stream_chat(retrying, user("hi"))

    assert text_of(chunks) == "recovered"
    attempts = server.chat_requests()
    assert [r.headers.get("x-stainless-retry-count") for r in attempts] == ["0", "1"]


async def test_cut_after_makes_the_stream_raise_after_the_first_n_chunks(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    server.script_chat(Reply(text="one two three four five six", cut_after=2))
    stream = await client.chat.completions.create(
        model="offline-chat", messages=user("hi"), stream=True
    )
    received: list[str] = []

    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) == "one two "


async def test_a_hang_longer_than_the_client_timeout_raises_a_timeout(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    server.script_chat(Hang(5))

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await stream_chat(client, user("hi"), timeout=0.2)

    assert time.monotonic() - started < 2


async def test_the_first_token_delay_holds_back_the_first_content(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    server.script_chat(Reply(text="late words", first_token_delay=0.2, token_delay=0.0))

    started = time.monotonic()
    stream = await client.chat.completions.create(
        model="offline-chat", messages=user("hi"), stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    waited = time.monotonic() - started
    await stream.close()

    assert 0.2 <= waited < 1.5


# -- recording -------------------------------------------------------------------------------


async def test_recorded_requests_contain_the_sent_messages(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    messages = [{"role": "system", "content": "be brief"}, *user("hello")]

    await stream_chat(client, messages, tools=[GENERATE_IMAGE_TOOL])

    (recorded,) = server.chat_requests()
    assert recorded.method == "POST"
    assert recorded.body["messages"] == messages
    assert recorded.body["tools"] == [GENERATE_IMAGE_TOOL]
    assert recorded.headers["authorization"] == "Bearer offline"
    assert server.image_requests() == []


def test_reset_forgets_scripts_and_requests(server: OfflineModelServer) -> None:
    server.script_chat(Fail(500))
    with openai.OpenAI(base_url=server.base_url, api_key="offline", max_retries=0) as sync:
        sync.models.list()
        server.reset()
        completion = sync.chat.completions.create(model="m", messages=user("hi"))

    assert completion.choices[0].finish_reason == "stop"
    assert [r.path for r in server.requests] == ["/v1/chat/completions"]


# -- images ----------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


async def test_images_decode_to_a_png_of_the_requested_size(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    result = await client.images.generate(
        model="offline-image", prompt="a lighthouse at dusk", size="1536x1024"
    )

    (image,) = result.data
    assert png_size(base64.b64decode(image.b64_json)) == (1536, 1024)
    assert image.revised_prompt is None
    assert server.image_requests()[0].body["prompt"] == "a lighthouse at dusk"


async def test_images_are_deterministic_per_prompt(client: openai.AsyncOpenAI) -> None:
    async def generate(prompt: str) -> bytes:
        result = await client.images.generate(model="m", prompt=prompt, size="256x256")
        return base64.b64decode(result.data[0].b64_json)

    first, again, other = (
        await generate("a red boat"),
        await generate("a red boat"),
        await generate("a blue boat"),
    )

    assert first == again == render_image("a red boat", 256, 256)
    assert other != first


def test_the_url_response_format_can_be_fetched(server: OfflineModelServer) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="offline", max_retries=0) as sync:
        result = sync.images.generate(
            model="m", prompt="a snowy forest", size="512x512", response_format="url"
        )

    url = result.data[0].url
    assert url.startswith(f"http://127.0.0.1:{server.port}/files/")
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"] == "image/png"
        assert png_size(response.read()) == (512, 512)


async def test_a_scripted_image_reply_can_revise_the_prompt_and_switch_format(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    server.script_images(ImageReply(response_format="url", revised_prompt="A calm red boat"))

    result = await client.images.generate(model="m", prompt="a red boat", size="256x256")

    assert result.data[0].url.endswith(".png")
    assert result.data[0].revised_prompt == "A calm red boat"


async def test_an_invalid_size_is_a_bad_request(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.generate(model="m", prompt="a boat", size="1000x1000")

    assert caught.value.code == "invalid_value"
    assert caught.value.param == "size"


async def test_a_moderation_failure_on_images_raises_bad_request_with_the_code(
    client: openai.AsyncOpenAI, server: OfflineModelServer
) -> None:
    server.script_images(
        Fail(
            400,
            "Your request was rejected by our safety system.",
            code="moderation_blocked",
            type="image_generation_user_error",
        )
    )

    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.generate(model="m", prompt="something forbidden")

    assert caught.value.code == "moderation_blocked"
    assert caught.value.type == "image_generation_user_error"
    assert "safety system" in caught.value.message


# -- misc ------------------------------------------------------------------------------------


async def test_unknown_paths_get_an_openai_style_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.get("/no/such/thing", cast_to=object)

    assert caught.value.body == {
        "message": "Unknown request URL: GET /v1/no/such/thing.",
        "type": "invalid_request_error",
        "code": "unknown_url",
        "param": None,
    }


async def test_models_are_listed(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()

    assert {model.id for model in models.data} == {"offline-chat", "offline-image"}


def test_the_cli_serves_until_it_is_told_to_stop() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "offline_model", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
            assert json.load(response)["object"] == "list"
        # SIGTERM, which a background job does not ignore (SIGINT it does).
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        process.stdout.close()


# -- the extension points (what bench/fake.py builds on) ---------------------------------------


def test_a_handler_subclass_adds_routes_chooses_replies_paces_and_sees_the_bytes() -> None:
    seen: list[Any] = []

    class Recording(Handler):
        def extra_route(self, method: str, path: str, body: dict[str, Any] | None) -> bool:
            if path == "/ping":
                self.send_json(200, {"pong": body})
                return True
            return super().extra_route(method, path, body)

        def chat_script(self, body: dict[str, Any]) -> ChatScript | None:
            if last_user_text(body["messages"]) == "use the hook":
                return Reply(text="from the hook", token_delay=30.0)
            return super().chat_script(body)

        def pause(self, seconds: float) -> None:
            seen.append(("pause", seconds))  # and no real wait: the 30 s must not happen

        def before_event(self, data: str) -> None:
            seen.append(("event", data))

        def render(self, prompt: str, width: int, height: int) -> bytes:
            return f"{prompt} at {width}x{height}".encode()

        def before_image_response(self, content: bytes) -> None:
            seen.append(("image ready", len(content)))

        def after_image_response(self, content: bytes) -> None:
            seen.append(("image sent", len(content)))

    with OfflineModelServer(handler=Recording, backlog=16) as server:
        request = urllib.request.Request(
            f"http://{server.public_host}:{server.port}/ping", data=b'{"a": 1}', method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response) == {"pong": {"a": 1}}
        client = openai.OpenAI(base_url=server.base_url, api_key="offline", max_retries=0)
        started = time.monotonic()
        stream = client.chat.completions.create(
            model="offline-chat", messages=user("use the hook"), stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        image = client.images.generate(model="offline-image", prompt="a kite", size="256x256")

        assert text == "from the hook"
        assert time.monotonic() - started < 10  # every wait went through pause()
        assert ("pause", 30.0) in seen
        events = [data for kind, data in seen if kind == "event"]
        assert events[-1] == "[DONE]"
        assert (
            "".join(
                json.loads(data)["choices"][0]["delta"].get("content") or "" for data in events[:-2]
            )
            == "from the hook"
        )
        assert base64.b64decode(image.data[0].b64_json) == b"a kite at 256x256"
        ready = [size for kind, size in seen if kind == "image ready"]
        # after_image_response runs on the server's thread once the bytes are out,
        # which can be just after the client has read them.
        assert within(lambda: ("image sent", ready[0]) in seen, timeout=5)
        assert ready == [size for kind, size in seen if kind == "image sent"] and ready[0] > 0
        # A route of one's own is answered before recording: only the model's own requests.
        assert [r.path for r in server.requests] == [
            "/v1/chat/completions",
            "/v1/images/generations",
        ]
