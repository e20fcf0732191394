"""Real servers' recorded streams, replayed through chatimg (tests/recordings/README.md).

Three levels, the same recordings:

* the stream reader alone (`llm.read_stream`): every recording, whole, one byte
  per read, and at seeded random read boundaries, gives exactly the text, the
  tool calls and the typed ending a user would see;
* the HTTP client (`llm.stream_chat`) against a replay server that sends the
  recorded status, headers and bytes (and breaks the connection where the
  recording broke);
* whole turns over the real websocket, the app pointed at the replay server
  for chat and at the project's fake for images.

The expected outcomes below were read off the recordings by hand; they are
what the server meant, not what any parser produced.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from channels.db import database_sync_to_async

from conversations import llm
from conversations.models import GeneratedImage, Message
from tests.conftest import text_of
from tests.replay import Recording, ReplayServer

LLAMA = "llama-cpp-python-0.3.36"
LITELLM_LLAMA = "litellm-1.108.7/via-llama-cpp-python"
LITELLM_FAKE = "litellm-1.108.7/via-chatimg-fake"
DOCS = "openai-api-reference"


@dataclass(frozen=True)
class Call:
    id: str
    arguments: str
    prompt: str
    strict_json: bool = True  # False: only json.loads(..., strict=False) reads them


@dataclass(frozen=True)
class Outcome:
    text: str = ""
    calls: tuple[Call, ...] = ()
    finish: str | None = None  # StreamEnd.finish_reason, when the stream is an answer
    usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # LLMError.code, when it is not


LLAMA_PROMPT = "A detailed description of the image. (Optional): a short sentence about the result."
LLAMA_FOLLOW_UP = (
    "generate_image:\n{&#34;prompt: prompt&#34;: a description of the image. (Optional): "
    "a short sentence about the result.&#34;}"
)
ECHO = (
    "call the generate_image tool with a detailed prompt, then say one short sentence "
    "about the result. Use Markdown for formatting."
)
FAKE_PROMPT = "a lighthouse at dusk, warm light over a calm sea"
FAKE_ARGS = json.dumps({"prompt": FAKE_PROMPT})


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion}


EXPECTED: dict[str, Outcome] = {
    # llama-cpp-python's server: no usage chunk ever; id and name repeated in every
    # tool-call chunk; an empty 200 body for an overflow and for a streamed auto choice.
    f"{LLAMA}/text": Outcome("Say hello in five words.", finish="stop"),
    f"{LLAMA}/tools-offered-no-choice": Outcome(ECHO, finish="stop"),
    f"{LLAMA}/tool-call": Outcome(
        calls=(
            Call(
                "call__0_generate_image_cmpl-5ec76d3f-a2aa-45e0-bc96-0000fabf083f",
                json.dumps({"prompt": LLAMA_PROMPT}),
                LLAMA_PROMPT,
            ),
        ),
        finish="tool_calls",
    ),
    f"{LLAMA}/tool-call-raw-newline": Outcome(
        calls=(
            Call(
                "call__0_generate_image_cmpl-f0580902-630c-42c4-9d7a-639910fa72c3",
                '{"prompt": "A detailed description of the image. (The prompts can be given at '
                "any time, just as long as you're following the prompt.)}\n\" }",
                "A detailed description of the image. (The prompts can be given at any time, "
                "just as long as you're following the prompt.)}\n",
                strict_json=False,
            ),
        ),
        finish="tool_calls",
    ),
    f"{LLAMA}/tool-choice-auto": Outcome(error="upstream_empty"),
    f"{LLAMA}/follow-up": Outcome(LLAMA_FOLLOW_UP, finish="stop"),
    f"{LLAMA}/length": Outcome("Write a story about the work of a", finish="length"),
    f"{LLAMA}/overflow": Outcome(error="upstream_empty"),
    f"{LLAMA}/cut": Outcome("Write a story", error="upstream_stream_cut"),
    # LiteLLM in front of llama-cpp-python: its own framing, a usage chunk, and upstream
    # failures turned into an empty "stop" answer or an error object mid-stream.
    f"{LITELLM_LLAMA}/text": Outcome("Say hello in five words.", finish="stop", usage=usage(62, 6)),
    f"{LITELLM_LLAMA}/tools-offered-no-choice": Outcome(ECHO, finish="stop", usage=usage(62, 24)),
    f"{LITELLM_LLAMA}/tool-call": Outcome(
        calls=(
            Call(
                "call__0_generate_image_cmpl-5ee547dc-b8e8-4271-ab27-5c6f27d1cadd",
                json.dumps({"prompt": LLAMA_PROMPT}),
                LLAMA_PROMPT,
            ),
        ),
        finish="tool_calls",
        usage=usage(62, 102),
    ),
    f"{LITELLM_LLAMA}/tool-choice-auto": Outcome(error="upstream_empty"),
    f"{LITELLM_LLAMA}/follow-up": Outcome(LLAMA_FOLLOW_UP, finish="stop", usage=usage(192, 33)),
    f"{LITELLM_LLAMA}/follow-up-content-null": Outcome(error="upstream_empty"),
    f"{LITELLM_LLAMA}/length": Outcome(
        "Write a story about the work of a", finish="length", usage=usage(73, 8)
    ),
    f"{LITELLM_LLAMA}/overflow": Outcome(error="upstream_empty"),
    f"{LITELLM_LLAMA}/cut": Outcome("Write a story", error="upstream_error"),
    # LiteLLM in front of the project's fake, scripted for what the small model can't do.
    f"{LITELLM_FAKE}/text": Outcome(
        "Hello! How can I help you today?", finish="stop", usage=usage(171, 7)
    ),
    f"{LITELLM_FAKE}/text-then-tool-call": Outcome(
        "Sure, here is a lighthouse at dusk.",
        calls=(Call("call_fake_lighthouse", FAKE_ARGS, FAKE_PROMPT),),
        finish="tool_calls",
        usage=usage(177, 14),
    ),
    f"{LITELLM_FAKE}/tool-call": Outcome(
        calls=(Call("call_fake_only", FAKE_ARGS, FAKE_PROMPT),),
        finish="tool_calls",
        usage=usage(177, 7),
    ),
    f"{LITELLM_FAKE}/two-tool-calls": Outcome(
        "Two pictures coming up.",
        calls=(
            Call("call_a", '{"prompt": "a lighthouse at dusk"}', "a lighthouse at dusk"),
            Call("call_b", '{"prompt": "a lighthouse at dawn"}', "a lighthouse at dawn"),
        ),
        finish="tool_calls",
        usage=usage(180, 12),
    ),
    f"{LITELLM_FAKE}/tool-call-not-offered": Outcome(
        calls=(Call("call_unasked", FAKE_ARGS, FAKE_PROMPT),),
        finish="tool_calls",
        usage=usage(97, 7),
    ),
    f"{LITELLM_FAKE}/cut": Outcome("This answer will ", error="upstream_error"),
    f"{LITELLM_FAKE}/follow-up": Outcome(
        "Here is your lighthouse at dusk.", finish="stop", usage=usage(305, 6)
    ),
    f"{LITELLM_FAKE}/follow-up-content-empty": Outcome(
        "Here is your lighthouse at dusk.", finish="stop", usage=usage(296, 6)
    ),
    f"{LITELLM_FAKE}/follow-up-content-null": Outcome(
        "Here is your lighthouse at dusk.", finish="stop", usage=usage(293, 6)
    ),
    # Transcribed from OpenAI's and Azure's documentation (labelled so in each sidecar).
    f"{DOCS}/text": Outcome("Hello!", finish="stop", usage=usage(9, 2)),
    f"{DOCS}/tool-call": Outcome(
        calls=(
            Call(
                "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                '{"prompt":"a lighthouse at dusk"}',
                "a lighthouse at dusk",
            ),
        ),
        finish="tool_calls",
        usage=usage(80, 12),
    ),
    f"{DOCS}/two-tool-calls": Outcome(
        calls=(
            Call(
                "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                '{"prompt": "a lighthouse at dusk"}',
                "a lighthouse at dusk",
            ),
            Call(
                "call_9sV4hbNXlCoWZYBQDRiD7x6Y",
                '{"prompt": "a lighthouse at dawn"}',
                "a lighthouse at dawn",
            ),
        ),
        finish="tool_calls",
    ),
    f"{DOCS}/length": Outcome("Once upon", finish="length", usage=usage(12, 2)),
    f"{DOCS}/azure-prompt-filter-first-chunk": Outcome("Color is a", finish="stop"),
    f"{DOCS}/azure-content-filter": Outcome("Color is", finish="content_filter"),
}

# Recordings that are not a stream: the server refused the request.
REFUSED: dict[str, str] = {
    # HTTP 500 "Input should be a valid string" for an assistant message with content null.
    f"{LLAMA}/follow-up-content-null": "upstream_error",
}

AUTO_PROMPT = "A detailed description of the image. Your prompt is as follows: "
TWO_PROMPT = (
    "A detailed description of the image. In your case: (a) a photo with a light show, "
    "(b) a photo with a sound recording."
)
# Answers without streaming, which chatimg asks for once when a stream to a request
# offering tools came back empty (llama-cpp-python cannot stream a tool call that the
# model chose itself): the empty stream it follows, and what the user should get.
FALLBACKS: dict[str, tuple[str, Outcome]] = {
    f"{LLAMA}/tool-choice-auto-non-streaming": (
        f"{LLAMA}/tool-choice-auto",
        Outcome(
            calls=(
                Call(
                    "call__0_generate_image_cmpl-8374f3b3-f5e3-40a7-a4a6-6e43333f8f51",
                    json.dumps({"prompt": AUTO_PROMPT}).replace('{"', '{ "').replace('"}', '" }'),
                    AUTO_PROMPT,
                ),
            ),
            finish="tool_calls",
            usage=usage(272, 20),
        ),
    ),
    # Asked for two pictures, the small model called the tool once.
    f"{LLAMA}/two-tool-calls-non-streaming": (
        f"{LLAMA}/tool-choice-auto",
        Outcome(
            calls=(
                Call(
                    "call__0_generate_image_cmpl-38c22721-ce59-492f-bd11-a4c3358f7429",
                    json.dumps({"prompt": TWO_PROMPT}),
                    TWO_PROMPT,
                ),
            ),
            finish="tool_calls",
            usage=usage(277, 36),
        ),
    ),
    # 400 context_length_exceeded: the chat is too long, a state the user can act on.
    f"{LLAMA}/overflow-non-streaming": (f"{LLAMA}/overflow", Outcome(error="context_too_long")),
    f"{LITELLM_LLAMA}/tool-choice-auto-non-streaming": (
        f"{LITELLM_LLAMA}/tool-choice-auto",
        Outcome(
            calls=(
                Call(
                    "call__0_generate_image_cmpl-ae254c6d-1ea2-4ed9-909a-113a9abebc90",
                    json.dumps({"prompt": AUTO_PROMPT}).replace('{"', '{ "').replace('"}', '" }'),
                    AUTO_PROMPT,
                ),
            ),
            finish="tool_calls",
            usage=usage(272, 20),
        ),
    ),
    f"{LITELLM_LLAMA}/two-tool-calls-non-streaming": (
        f"{LITELLM_LLAMA}/tool-choice-auto",
        Outcome(
            calls=(
                Call(
                    "call__0_generate_image_cmpl-ffc65662-04ae-42dd-a174-fc6315ec57f0",
                    json.dumps({"prompt": TWO_PROMPT}),
                    TWO_PROMPT,
                ),
            ),
            finish="tool_calls",
            usage=usage(277, 36),
        ),
    ),
    # LiteLLM: 400 ContextWindowExceededError (code "400").
    f"{LITELLM_LLAMA}/overflow-non-streaming": (
        f"{LITELLM_LLAMA}/overflow",
        Outcome(error="context_too_long"),
    ),
}


def test_every_recording_has_an_expected_outcome() -> None:
    assert set(Recording.all_names()) == set(EXPECTED) | set(REFUSED) | set(FALLBACKS)
    for name in EXPECTED:
        assert Recording.load(name).status == 200, name
    for name, (empty_stream, _) in FALLBACKS.items():
        assert EXPECTED[empty_stream].error == "upstream_empty", name
    for name in REFUSED:
        assert Recording.load(name).status >= 400, name


def test_recordings_say_how_they_were_made() -> None:
    for name in Recording.all_names():
        sidecar = Recording.load(name).sidecar
        assert sidecar["server"] and sidecar["version"] and sidecar["description"], name
        if sidecar["server"] == "openai-api-reference":
            assert "transcribed by hand" in sidecar["TRANSCRIPTION"], name
            assert sidecar["source"].startswith("https://"), name
        else:
            assert sidecar["server_command"] and sidecar["recorder_command"], name
            if name in FALLBACKS:
                assert "stream" not in sidecar["request"], name
                continue
            assert sidecar["request"]["stream"] is True, name
            assert sidecar["request"]["stream_options"] == {"include_usage": True}, name


# --- the reader, at any read boundaries ----------------------------------------------


def partitions(body: bytes, name: str) -> list[list[bytes]]:
    """The body whole, one byte per read, and 25 seeded random partitions."""
    if not body:
        return [[]]  # no bytes at all: the stream just ends
    ways = [[body], [body[i : i + 1] for i in range(len(body))]]
    rng = random.Random(name)  # the same splits on every run, different per recording
    for _ in range(25):
        cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(1, 40))))
        edges = [0, *cuts, len(body)]
        ways.append([body[a:b] for a, b in itertools.pairwise(edges)])
    return ways


@dataclass
class Seen:
    text: str = ""
    calls: list[llm.ToolCallRequest] = field(default_factory=list)
    end: llm.StreamEnd | None = None
    error: str | None = None
    order: list[str] = field(default_factory=list)


async def collect(events: AsyncIterator[llm.StreamEvent]) -> Seen:
    seen = Seen()
    try:
        async for event in events:
            assert seen.end is None, "an event after StreamEnd"
            if isinstance(event, llm.TextDelta):
                assert event.text, "an empty TextDelta"
                seen.text += event.text
                seen.order.append("text")
            elif isinstance(event, llm.ToolCallRequest):
                seen.calls.append(event)
                seen.order.append("call")
            else:
                seen.end = event
    except llm.LLMError as exc:
        seen.error = exc.code
    return seen


def check(seen: Seen, expected: Outcome) -> None:
    assert seen.text == expected.text
    assert seen.error == expected.error
    if expected.error is not None:
        assert seen.end is None and not seen.calls
        return
    # Text first, then whole tool calls, then one typed ending.
    assert seen.order == sorted(seen.order, key=["text", "call"].index)
    assert seen.end is not None
    assert seen.end.finish_reason == expected.finish
    assert seen.end.usage == expected.usage
    assert [(c.call_id, c.name, c.arguments) for c in seen.calls] == [
        (call.id, "generate_image", call.arguments) for call in expected.calls
    ]
    for got, call in zip(seen.calls, expected.calls, strict=True):
        arguments = json.loads(got.arguments, strict=call.strict_json)
        assert arguments["prompt"] == call.prompt


async def chunks_of(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_the_reader_gives_what_the_server_meant_at_any_read_boundaries(name: str) -> None:
    recording = Recording.load(name)
    for pieces in partitions(recording.body, name):
        seen = await collect(llm.read_stream(chunks_of(pieces)))
        check(seen, EXPECTED[name])


# --- the HTTP client against the replayed server --------------------------------------


@pytest.fixture
def replay(fake_openai: Any, settings: Any) -> Any:
    """Chat requests go to the replay server; images to the project's fake.

    A request with a null message content gets llama-cpp-python's recorded 500,
    as that server would answer it.
    """
    with ReplayServer(refuse_null_content=f"{LLAMA}/follow-up-content-null") as server:
        settings.OPENAI_BASE_URL = server.base_url
        settings.LLM_MAX_RETRIES = 0  # a replayed refusal must not be asked for twice
        yield server


@pytest.mark.parametrize("name", sorted(EXPECTED) + sorted(REFUSED))
async def test_the_client_reads_the_replayed_response_over_http(replay: Any, name: str) -> None:
    replay.queue(name)
    messages = [{"role": "user", "content": "hi"}]
    seen = await collect(llm.stream_chat(messages, None))
    if name in REFUSED:
        assert (seen.error, seen.text, seen.end) == (REFUSED[name], "", None)
    else:
        check(seen, EXPECTED[name])
    assert replay.left() == 0


TOOLS = [
    {
        "type": "function",
        "function": {"name": "generate_image", "parameters": {"type": "object"}},
    }
]


@pytest.mark.parametrize("name", sorted(FALLBACKS))
async def test_an_empty_stream_to_a_request_with_tools_is_asked_again_without_streaming(
    replay: Any, name: str
) -> None:
    empty_stream, expected = FALLBACKS[name]
    replay.queue(empty_stream, name)
    seen = await collect(llm.stream_chat([{"role": "user", "content": "hi"}], TOOLS))
    check(seen, expected)
    assert [body.get("stream") for body in replay.requests] == [True, None]


# --- whole turns over the real socket ------------------------------------------------

socket_tests = pytest.mark.django_db(transaction=True)


def frames_of(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == kind]


def no_null_content(requests: list[dict[str, Any] | None]) -> None:
    """History every server accepts: llama-cpp-python refuses content null with a 500."""
    for body in requests:
        assert body is not None
        for message in body["messages"]:
            assert isinstance(message.get("content"), str), message


async def draw_turn(connect: Any, make_user: Any, text: str = "draw a lighthouse at dusk") -> Any:
    user = await database_sync_to_async(make_user)()
    socket = await connect(user)
    await socket.send("message.send", client_message_id="c1", text=text)
    frames = await socket.receive_until("assistant.completed", "assistant.failed", timeout=20)
    return socket, frames


@socket_tests
async def test_a_llama_cpp_tool_call_stores_the_image_and_streams_its_follow_up(
    replay: Any, connect: Any, make_user: Any, local_storage: Any
) -> None:
    replay.queue(f"{LLAMA}/tool-call", f"{LLAMA}/follow-up")
    socket, frames = await draw_turn(connect, make_user)

    assert frames[-1]["type"] == "assistant.completed", frames[-1]
    (started,) = frames_of(frames, "tool.started")
    assert started["name"] == "generate_image"
    assert started["prompt"] == LLAMA_PROMPT
    (done,) = frames_of(frames, "tool.completed")
    image = await GeneratedImage.objects.aget(pk=done["image"]["id"])
    assert image.prompt == LLAMA_PROMPT
    assert (local_storage / image.file.name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    answer = await Message.objects.aget(pk=frames[0]["assistant_message_id"])
    assert answer.status == Message.Status.COMPLETE
    assert LLAMA_FOLLOW_UP in answer.text
    assert text_of(socket.frames, answer.pk) == answer.text
    assert replay.left() == 0
    no_null_content(replay.requests)


@socket_tests
async def test_a_conversation_goes_on_after_a_llama_cpp_tool_round(
    replay: Any, connect: Any, make_user: Any
) -> None:
    replay.queue(f"{LLAMA}/tool-call", f"{LLAMA}/follow-up", f"{LLAMA}/text")
    socket, frames = await draw_turn(connect, make_user)
    assert frames[-1]["type"] == "assistant.completed", frames[-1]
    await socket.send(
        "message.send",
        conversation_id=frames[0]["conversation_id"],
        client_message_id="c2",
        text="Say hello in five words.",
    )
    more = await socket.receive_until("assistant.completed", "assistant.failed", timeout=20)
    assert more[-1]["type"] == "assistant.completed", more[-1]
    answer = await Message.objects.aget(pk=more[0]["assistant_message_id"])
    assert answer.text == "Say hello in five words."
    # The third request carries the tool round as llama-cpp-python accepts it.
    third = replay.requests[2]
    round_trip = [m for m in third["messages"] if m["role"] in ("assistant", "tool")]
    assert round_trip[0]["tool_calls"][0]["function"]["name"] == "generate_image"
    assert round_trip[1]["role"] == "tool" and isinstance(round_trip[1]["content"], str)
    no_null_content(replay.requests)


@socket_tests
async def test_a_tool_call_whose_arguments_hold_a_raw_newline_still_draws(
    replay: Any, connect: Any, make_user: Any
) -> None:
    # llama-cpp-python's grammar let the small model put a raw newline in a JSON string.
    replay.queue(f"{LLAMA}/tool-call-raw-newline", f"{LLAMA}/follow-up")
    _, frames = await draw_turn(connect, make_user)
    assert frames_of(frames, "tool.failed") == []
    assert len(frames_of(frames, "tool.completed")) == 1
    assert frames[-1]["type"] == "assistant.completed"


@socket_tests
async def test_text_then_a_tool_call_through_litellm_shows_text_image_and_follow_up(
    replay: Any, connect: Any, make_user: Any
) -> None:
    replay.queue(f"{LITELLM_FAKE}/text-then-tool-call", f"{LITELLM_FAKE}/follow-up")
    _, frames = await draw_turn(connect, make_user)
    assert frames[-1]["type"] == "assistant.completed", frames[-1]
    (done,) = frames_of(frames, "tool.completed")
    assert done["image"]["prompt"] == FAKE_PROMPT
    answer = await Message.objects.aget(pk=frames[0]["assistant_message_id"])
    assert answer.text.startswith("Sure, here is a lighthouse at dusk.")
    assert answer.text.endswith("Here is your lighthouse at dusk.")
    follow_up = replay.requests[1]
    assistant = next(m for m in follow_up["messages"] if m.get("tool_calls"))
    assert assistant["content"] == "Sure, here is a lighthouse at dusk."
    assert assistant["tool_calls"][0]["id"] == "call_fake_lighthouse"


@socket_tests
async def test_two_tool_calls_in_one_answer_store_two_images(
    replay: Any, connect: Any, make_user: Any
) -> None:
    replay.queue(f"{LITELLM_FAKE}/two-tool-calls", f"{LITELLM_FAKE}/follow-up")
    _, frames = await draw_turn(connect, make_user, "draw a lighthouse at dusk and at dawn")
    assert frames[-1]["type"] == "assistant.completed", frames[-1]
    prompts = [f["image"]["prompt"] for f in frames_of(frames, "tool.completed")]
    assert prompts == ["a lighthouse at dusk", "a lighthouse at dawn"]
    assert await GeneratedImage.objects.acount() == 2


@pytest.mark.parametrize("server", [LLAMA, LITELLM_LLAMA])
@socket_tests
async def test_a_context_overflow_says_the_chat_is_too_long(
    replay: Any, connect: Any, make_user: Any, server: str
) -> None:
    # An empty 200 stream (llama-cpp-python; an empty "stop" through LiteLLM), then
    # the same request without streaming: 400 context_length_exceeded.
    replay.queue(f"{server}/overflow", f"{server}/overflow-non-streaming")
    _, frames = await draw_turn(connect, make_user, "Describe this very long list.")
    failed = frames[-1]
    assert (failed["type"], failed["code"], failed["retryable"]) == (
        "assistant.failed",
        "context_too_long",
        False,
    )
    answer = await Message.objects.aget(pk=frames[0]["assistant_message_id"])
    assert answer.status == Message.Status.FAILED


@socket_tests
async def test_an_empty_answer_is_a_visible_retryable_failure(
    replay: Any, connect: Any, make_user: Any, settings: Any
) -> None:
    # LiteLLM's empty "stop" stream for an upstream that failed (content null), to a
    # request without tools (so not asked again): nothing to show, and it says so.
    settings.MAX_TOOL_CALLS_PER_TURN = 0
    replay.queue(f"{LITELLM_LLAMA}/follow-up-content-null")
    _, frames = await draw_turn(connect, make_user, "Hello?")
    failed = frames[-1]
    assert (failed["type"], failed["code"], failed["retryable"]) == (
        "assistant.failed",
        "upstream_empty",
        True,
    )
    answer = await Message.objects.aget(pk=frames[0]["assistant_message_id"])
    assert answer.status == Message.Status.FAILED


@socket_tests
async def test_llama_cpp_choosing_the_tool_itself_still_draws(
    replay: Any, connect: Any, make_user: Any
) -> None:
    # tool_choice "auto" (the model chooses): llama-cpp-python's empty stream, the call
    # without streaming, then the streamed follow-up.
    replay.queue(
        f"{LLAMA}/tool-choice-auto",
        f"{LLAMA}/tool-choice-auto-non-streaming",
        f"{LLAMA}/follow-up",
    )
    _, frames = await draw_turn(connect, make_user)
    assert frames[-1]["type"] == "assistant.completed", frames[-1]
    (done,) = frames_of(frames, "tool.completed")
    assert done["image"]["prompt"] == AUTO_PROMPT.strip()
    assert replay.left() == 0
    no_null_content(replay.requests)


@pytest.mark.parametrize("name", [f"{LLAMA}/length", f"{LITELLM_LLAMA}/length", f"{DOCS}/length"])
@socket_tests
async def test_an_answer_cut_at_its_length_limit_is_kept_and_marked_truncated(
    replay: Any, connect: Any, make_user: Any, name: str
) -> None:
    replay.queue(name)
    _, frames = await draw_turn(connect, make_user, "Write a long story.")
    completed = frames[-1]
    assert completed["type"] == "assistant.completed", completed
    assert completed["truncated"] is True
    answer = await Message.objects.aget(pk=frames[0]["assistant_message_id"])
    assert answer.text == EXPECTED[name].text


@pytest.mark.parametrize(
    ("name", "code"),
    [
        (f"{LLAMA}/cut", "upstream_stream_cut"),
        (f"{LITELLM_LLAMA}/cut", "upstream_error"),
        (f"{LITELLM_FAKE}/cut", "upstream_error"),
        (f"{DOCS}/azure-content-filter", "content_filtered"),
    ],
)
@socket_tests
async def test_an_answer_that_breaks_off_fails_visibly_and_keeps_its_text(
    replay: Any, connect: Any, make_user: Any, name: str, code: str
) -> None:
    replay.queue(name)
    _, frames = await draw_turn(connect, make_user, "Write a long story.")
    failed = frames[-1]
    assert (failed["type"], failed["code"]) == ("assistant.failed", code), failed
    answer = await Message.objects.aget(pk=frames[0]["assistant_message_id"])
    assert answer.text == EXPECTED[name].text
    assert failed["text_length"] == len(answer.text)


@socket_tests
async def test_tool_calls_returned_when_none_were_offered_do_not_loop(
    replay: Any, connect: Any, make_user: Any, settings: Any
) -> None:
    settings.MAX_TOOL_CALLS_PER_TURN = 1
    # One real round, then a server that answers every request with a tool call.
    replay.queue(f"{LITELLM_FAKE}/tool-call", *[f"{LITELLM_FAKE}/tool-call-not-offered"] * 20)
    _, frames = await draw_turn(connect, make_user)
    assert frames[-1]["type"] in ("assistant.completed", "assistant.failed")
    assert len(replay.requests) <= settings.MAX_MODEL_ROUNDS
    assert await GeneratedImage.objects.acount() == 1
    # Only the requests that offered tools got tool calls run.
    assert replay.requests[-1].get("tools") is None
