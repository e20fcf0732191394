"""The chat-completions stream reader alone: bytes in, typed events or a typed error out.

Real servers' recorded bytes are replayed in tests/test_provider_conformance.py;
these cases pin the rules one at a time, each split at every byte boundary.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conversations import llm


def sse(*chunks: dict[str, Any] | str, done: bool = True) -> bytes:
    lines = [c if isinstance(c, str) else json.dumps(c) for c in chunks]
    if done:
        lines.append("[DONE]")
    return b"".join(f"data: {line}\n\n".encode() for line in lines)


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


def call_part(index: int | None = None, **fields: Any) -> dict[str, Any]:
    part = {key: value for key, value in fields.items() if key != "name" and key != "args"}
    function = {}
    if "name" in fields:
        function["name"] = fields["name"]
    if "args" in fields:
        function["arguments"] = fields["args"]
    if index is not None:
        part["index"] = index
    return {**part, "function": function}


async def read(body: bytes, split: int | None = None) -> list[Any]:
    async def chunks() -> AsyncIterator[bytes]:
        if split is None:
            yield body
            return
        yield body[:split]
        yield body[split:]

    return [event async for event in llm.read_stream(chunks())]


async def every_split(body: bytes) -> list[Any]:
    """The events, checked to be the same whichever byte the body is split at."""
    whole = await read(body)
    for split in range(1, len(body)):
        assert await read(body, split) == whole, f"split at byte {split}"
    return whole


async def test_text_arrives_as_deltas_and_the_ending_carries_usage() -> None:
    body = sse(
        delta(role="assistant", content=""),
        delta(content="Héllo"),
        delta(content=" wörld"),
        delta(finish="stop"),
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    )
    events = await every_split(body)
    assert events == [
        llm.TextDelta("Héllo"),
        llm.TextDelta(" wörld"),
        llm.StreamEnd("stop", {"prompt_tokens": 5, "completion_tokens": 2}),
    ]


async def test_a_name_and_id_repeated_in_every_fragment_make_one_call() -> None:
    # llama.cpp's server sends the id and the whole name with every fragment.
    body = sse(
        delta(tool_calls=[call_part(0, id="call_1", name="generate_image", args="")]),
        delta(tool_calls=[call_part(0, id="call_1", name="generate_image", args='{"prompt"')]),
        delta(tool_calls=[call_part(0, id="call_1", name="generate_image", args=': "a fox"}')]),
        delta(finish="tool_calls"),
    )
    events = await every_split(body)
    assert events == [
        llm.ToolCallRequest("call_1", "generate_image", '{"prompt": "a fox"}'),
        llm.StreamEnd("tool_calls", {}),
    ]


async def test_two_calls_without_an_index_are_told_apart_by_their_ids() -> None:
    body = sse(
        delta(tool_calls=[call_part(id="a", name="generate_image", args='{"prompt": "x"}')]),
        delta(tool_calls=[call_part(id="b", name="generate_image", args='{"prompt": "y"}')]),
        delta(finish="tool_calls"),
    )
    calls = [e for e in await read(body) if isinstance(e, llm.ToolCallRequest)]
    assert [(c.call_id, c.arguments) for c in calls] == [
        ("a", '{"prompt": "x"}'),
        ("b", '{"prompt": "y"}'),
    ]


async def test_a_late_id_and_a_name_in_pieces_are_assembled() -> None:
    body = sse(
        delta(tool_calls=[call_part(0, name="generate_", args="{")]),
        delta(tool_calls=[call_part(0, id="late", name="image", args="}")]),
        delta(finish="tool_calls"),
    )
    calls = [e for e in await read(body) if isinstance(e, llm.ToolCallRequest)]
    assert calls == [llm.ToolCallRequest("late", "generate_image", "{}")]


async def test_a_done_without_a_finish_reason_is_a_normal_ending() -> None:
    assert (await read(sse(delta(content="hi"))))[-1] == llm.StreamEnd("stop", {})


async def test_finish_reason_on_the_last_text_chunk_counts() -> None:
    events = await read(sse(delta(finish="length", content="cut mid-"), done=False))
    assert events == [llm.TextDelta("cut mid-"), llm.StreamEnd("length", {})]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "upstream_empty"),  # llama.cpp's answer to a context overflow
        (sse(delta(role="assistant", content=""), delta(finish="stop")), "upstream_empty"),
        (sse(delta(content="half an ans"), done=False), "upstream_stream_cut"),
        (sse(delta(content="so"), {"error": {"message": "upstream crashed"}}), "upstream_error"),
        (b"data: {not json\n\n", "upstream_error"),
    ],
    ids=["empty-body", "no-content", "no-ending", "error-object", "garbage"],
)
async def test_an_ending_that_is_not_an_answer_is_a_typed_error(body: bytes, code: str) -> None:
    with pytest.raises(llm.LLMError) as caught:
        await read(body)
    assert caught.value.code == code
    assert caught.value.retryable is True


async def test_a_content_filter_ending_comes_through_even_without_text() -> None:
    body = sse({"choices": [], "prompt_filter_results": []}, delta(finish="content_filter"))
    assert await read(body) == [llm.StreamEnd("content_filter", {})]


@pytest.mark.parametrize(
    "raw",
    [
        "**Lighthouse at Dusk**",
        "Title: Lighthouse at Dusk.",
        '"Lighthouse at Dusk"\nMore text',
        "# Lighthouse at Dusk",
    ],
)
def test_a_title_is_cleaned_of_markdown_labels_and_quotes(raw: str) -> None:
    assert llm.clean_title(raw) == "Lighthouse at Dusk"


def test_a_title_loses_an_echoed_prompt_label_and_stays_short() -> None:
    # What gemma-3-270m on llama-cpp-python wrote as a "title" (seen live).
    raw = "Assistant: You are a helper in the chat app that can ask for help when necessary"
    assert llm.clean_title(raw) == "You are a helper in the chat app"


def test_a_title_keeps_underscores_inside_words() -> None:
    assert llm.clean_title("_snake_case_ tips") == "snake_case tips"


async def test_a_whole_call_in_one_chunk_ended_with_stop_is_still_a_call() -> None:
    # Ollama's OpenAI endpoint: the complete call at once, then "stop".
    body = sse(
        delta(
            role="assistant",
            content="",
            tool_calls=[call_part(0, id="call_x", name="generate_image", args='{"prompt":"a"}')],
        ),
        delta(finish="stop"),
    )
    events = await every_split(body)
    assert events == [
        llm.ToolCallRequest("call_x", "generate_image", '{"prompt":"a"}'),
        llm.StreamEnd("stop", {}),
    ]


async def test_keep_alive_comments_between_events_are_skipped() -> None:
    # OpenRouter sends ": OPENROUTER PROCESSING" while the model thinks.
    body = b": OPENROUTER PROCESSING\n\n" + sse(delta(content="hi"), delta(finish="stop"))
    assert await every_split(body) == [llm.TextDelta("hi"), llm.StreamEnd("stop", {})]
