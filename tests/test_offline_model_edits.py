"""The offline model's edits, several images and streamed previews, over real HTTP with
the real ``openai`` client; and the canned answers the demo's suggestions need.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import openai
import pytest
from PIL import Image, ImageStat

from offline_model import OfflineModelServer, plan_chat, render_image

EDIT_TOOL = {"type": "function", "function": {"name": "edit_image", "parameters": {}}}
GENERATE_TOOL = {
    "type": "function",
    "function": {
        "name": "generate_image",
        "parameters": {"properties": {"n": {"type": "integer", "maximum": 4}}},
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[OfflineModelServer]:
    with OfflineModelServer() as running:
        yield running


@pytest.fixture
def client(server: OfflineModelServer) -> openai.OpenAI:
    server.reset()
    return openai.OpenAI(base_url=server.base_url, api_key="offline", max_retries=0)


def picture(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as opened:
        return opened.convert("RGB")


def brightness(image: Image.Image) -> float:
    return sum(ImageStat.Stat(image.convert("L")).mean)


def edit(client: openai.OpenAI, prompt: str, *sources: bytes, **extra: object) -> list[bytes]:
    files = [(f"s{i}.png", data, "image/png") for i, data in enumerate(sources)]
    response = client.images.edit(
        model="offline-image", image=files[0] if len(files) == 1 else files, prompt=prompt, **extra
    )
    return [base64.b64decode(item.b64_json or "") for item in response.data or []]


SOURCE = render_image("a lighthouse at dusk", 256, 256)


def test_night_darkens_the_source_and_is_deterministic(client: openai.OpenAI) -> None:
    (night,) = edit(client, "make it night", SOURCE)
    assert brightness(picture(night)) < 0.6 * brightness(picture(SOURCE))
    assert edit(client, "make it night", SOURCE) == [night]  # same input, same bytes
    assert picture(night).size == (256, 256)  # the source's size when none is asked


def test_a_colour_word_tints_towards_that_colour(client: openai.OpenAI) -> None:
    (blue,) = edit(client, "make it blue", SOURCE)
    before, after = ImageStat.Stat(picture(SOURCE)).mean, ImageStat.Stat(picture(blue)).mean
    assert after[2] - after[0] > before[2] - before[0]  # bluer than red, more than before


def test_the_edit_request_is_multipart_with_every_source_in_order(
    client: openai.OpenAI, server: OfflineModelServer
) -> None:
    fox = render_image("a fox", 256, 256)
    (result,) = edit(client, "put the fox in", SOURCE, fox)
    (request,) = server.edit_requests()
    assert request.headers["content-type"].startswith("multipart/form-data")
    assert [(field, data) for field, _, _, data in request.files] == [
        ("image[]", SOURCE),
        ("image[]", fox),
    ]
    assert request.body is not None and request.body["prompt"] == "put the fox in"
    # The reference shows as an inset: the top-left corner changed, the rest follows the source.
    assert picture(result).getpixel((20, 20)) != picture(SOURCE).getpixel((20, 20))


def test_a_mask_keeps_the_opaque_pixels_of_the_source(client: openai.OpenAI) -> None:
    mask = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 128, 256))  # the left half transparent: edit there only
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    (masked,) = edit(
        client, "make it night", SOURCE, mask=("m.png", buffer.getvalue(), "image/png")
    )
    source, result = picture(SOURCE), picture(masked)
    assert result.getpixel((200, 100)) == source.getpixel((200, 100))  # kept
    assert brightness(result.crop((0, 0, 128, 200))) < brightness(source.crop((0, 0, 128, 200)))


def test_n_edits_are_different_pictures(client: openai.OpenAI) -> None:
    results = edit(client, "make it stormy", SOURCE, n=3)
    assert len(results) == 3 and len(set(results)) == 3


def test_a_picture_that_is_not_an_image_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        edit(client, "make it night", b"not a png")
    assert refused.value.code == "invalid_image_file"


@pytest.mark.parametrize("kind", ["generate", "edit"])
def test_streaming_sends_partials_in_order_then_the_final_image(
    client: openai.OpenAI, kind: str
) -> None:
    if kind == "edit":
        stream = client.images.edit(
            model="offline-image",
            image=("s.png", SOURCE, "image/png"),
            prompt="make it night",
            stream=True,
            partial_images=3,
        )
        prefix = "image_edit"
    else:
        stream = client.images.generate(
            model="offline-image", prompt="a fox", size="256x256", stream=True, partial_images=3
        )
        prefix = "image_generation"
    events = list(stream)
    assert [event.type for event in events] == [f"{prefix}.partial_image"] * 3 + [
        f"{prefix}.completed"
    ]
    assert [getattr(event, "partial_image_index", None) for event in events[:3]] == [0, 1, 2]
    final = base64.b64decode(events[-1].b64_json)
    assert picture(final).size == (256, 256)
    assert all(base64.b64decode(event.b64_json) != final for event in events[:3])


def test_the_demos_suggestion_is_answered_not_refused() -> None:
    body = {"messages": [{"role": "user", "content": "Explain websockets in one paragraph"}]}
    reply = plan_chat(body)
    assert "WebSocket" in reply.text and "can't really chat" not in reply.text
    assert plan_chat(body) == reply  # deterministic


def tool_result(**fields: object) -> dict[str, object]:
    return {"role": "tool", "tool_call_id": "c", "content": json.dumps({"status": "ok", **fields})}


def test_make_it_stormy_after_a_picture_calls_edit_image_on_that_picture() -> None:
    messages = [
        {"role": "user", "content": "draw a lighthouse at dusk"},
        {"role": "assistant", "content": "", "tool_calls": []},
        tool_result(image_id="11111111-1111-1111-1111-111111111111", prompt="a lighthouse"),
        {"role": "user", "content": "make it stormy"},
    ]
    reply = plan_chat({"messages": messages, "tools": [GENERATE_TOOL, EDIT_TOOL]})
    (call,) = reply.tool_calls
    assert call.name == "edit_image"
    assert call.arguments == {
        "image_ids": ["11111111-1111-1111-1111-111111111111"],
        "prompt": "make it stormy",
    }
    # Without an earlier picture there is nothing to edit: no edit call.
    alone = plan_chat({"messages": messages[-1:], "tools": [GENERATE_TOOL, EDIT_TOOL]})
    assert not alone.tool_calls


def test_three_pictures_asks_for_n_within_the_tools_maximum() -> None:
    body = {
        "messages": [{"role": "user", "content": "draw three pictures of a fox"}],
        "tools": [GENERATE_TOOL],
    }
    (call,) = plan_chat(body).tool_calls
    assert call.arguments == {"prompt": "a fox", "n": 3}
