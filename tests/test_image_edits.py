"""Images you iterate on: edits by id, several images per call, live previews.

Through the real socket, with the OpenAI fake over HTTP: the edit request is a
real multipart upload that the fake parses, so what the provider received is
what these tests check.
"""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from PIL import Image

from conversations.models import Conversation, GeneratedImage, ImageQuota, ToolInvocation
from offline_model import Fail, Handler, OfflineModelServer, Reply, ToolCall

pytestmark = pytest.mark.django_db(transaction=True)

END = ("assistant.completed", "assistant.failed")


async def say(socket: Any, text: str, conversation_id: str | None = None) -> list[dict]:
    fields: dict[str, Any] = {"client_message_id": uuid.uuid4().hex, "text": text}
    if conversation_id:
        fields["conversation_id"] = conversation_id
    await socket.send("message.send", **fields)
    return await socket.receive_until(*END, timeout=30)


def of_type(frames: list[dict], kind: str) -> list[dict]:
    return [frame for frame in frames if frame["type"] == kind]


async def draw_then(socket: Any, *follow_ups: str) -> tuple[str, list[list[dict]]]:
    """Draw a lighthouse, then say each follow-up in the same conversation."""
    first = await say(socket, "draw a lighthouse at dusk")
    conversation_id = first[0]["conversation_id"]
    turns = [first]
    for text in follow_ups:
        turns.append(await say(socket, text, conversation_id))
    return conversation_id, turns


async def test_an_edit_sends_the_stored_bytes_of_its_parent_and_records_it(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer, local_storage: Any, settings: Any
) -> None:
    settings.IMAGE_PREVIEWS = {}  # the edit streams its previews too
    alice = await database_sync_to_async(make_user)("alice")
    socket = await connect(alice)
    _, (_, edit) = await draw_then(socket, "make it night")
    parent = await GeneratedImage.objects.aget(tool_invocation__name="generate_image")

    # What the provider got: a multipart upload of exactly the stored bytes.
    (request,) = fake_openai.edit_requests()
    assert request.body is not None and request.body["prompt"] == "make it night"
    (upload,) = request.files
    stored = (local_storage / parent.file.name).read_bytes()
    assert upload[0] == "image" and upload[2] == "image/png"
    assert (
        hashlib.sha256(upload[3]).hexdigest()
        == parent.sha256
        == hashlib.sha256(stored).digest().hex()
    )

    assert [f["partial"] for f in of_type(edit, "tool.preview")] == [0, 1]
    (completed,) = of_type(edit, "tool.completed")
    assert completed["name"] == "edit_image"
    assert completed["image"]["parents"] == [
        {"id": str(parent.id), "url": parent.get_absolute_url(), "prompt": parent.prompt}
    ]
    child = await GeneratedImage.objects.aget(pk=completed["image"]["id"])
    assert [p.pk async for p in child.parents.all()] == [parent.pk]
    assert [c.pk async for c in parent.children.all()] == [child.pk]
    assert child.sha256 != parent.sha256  # a real edit, not the parent again
    # The model is told what it edited; the text follows it.
    invocation = await ToolInvocation.objects.aget(name="edit_image")
    assert invocation.result["edited_from"] == [str(parent.id)]
    assert "edited" in edit[-1]["html"]


async def test_a_second_source_goes_as_image_array_in_order(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer, local_storage: Any
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    socket = await connect(alice)
    first = await say(socket, "draw a fox in a snowy forest")
    conversation_id = first[0]["conversation_id"]
    await say(socket, "draw a lighthouse at dusk", conversation_id)
    await say(socket, "put the fox from the first picture into this one", conversation_id)
    fox = await GeneratedImage.objects.aget(prompt="a fox in a snowy forest")
    lighthouse = await GeneratedImage.objects.aget(prompt="a lighthouse at dusk")
    (request,) = fake_openai.edit_requests()
    assert [(field, hashlib.sha256(data).hexdigest()) for field, _, _, data in request.files] == [
        ("image[]", lighthouse.sha256),
        ("image[]", fox.sha256),
    ]
    child = await GeneratedImage.objects.aget(tool_invocation__name="edit_image")
    assert {p.pk async for p in child.parents.all()} == {fox.pk, lighthouse.pk}


async def test_another_users_image_id_as_an_edit_source_is_refused(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    mallory = await database_sync_to_async(make_user)("mallory")
    await say(await connect(alice), "draw a lighthouse at dusk")
    theirs = await GeneratedImage.objects.aget()

    fake_openai.script_chat(
        Reply(
            text="Editing.",
            tool_calls=[ToolCall("edit_image", {"image_ids": [str(theirs.id)], "prompt": "x"})],
        )
    )
    frames = await say(await connect(mallory), "edit that one")
    (failed,) = of_type(frames, "tool.failed")
    assert failed["error"]["code"] == "image_not_found"
    assert "no image" in failed["error"]["message"].lower()
    assert fake_openai.edit_requests() == []  # nothing was read or sent
    assert await GeneratedImage.objects.acount() == 1
    # Nothing about alice's image reaches mallory: not its prompt, not its URL.
    assert "lighthouse" not in str(frames) and theirs.get_absolute_url() not in str(frames)


async def test_an_image_of_another_conversation_of_the_same_user_is_refused(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    socket = await connect(alice)
    await say(socket, "draw a lighthouse at dusk")
    elsewhere = await GeneratedImage.objects.aget()
    fake_openai.script_chat(
        Reply(
            tool_calls=[ToolCall("edit_image", {"image_ids": [str(elsewhere.id)], "prompt": "x"})]
        )
    )
    frames = await say(socket, "edit it")  # a new conversation
    assert of_type(frames, "tool.failed")[0]["error"]["code"] == "image_not_found"
    assert fake_openai.edit_requests() == []


async def test_previews_arrive_in_order_before_the_final_image_and_are_not_stored(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer, settings: Any
) -> None:
    settings.IMAGE_PREVIEWS = {}  # the model table's default: 2 for gpt-image models
    settings.IMAGE_PREVIEW_PX = 64
    alice = await database_sync_to_async(make_user)("alice")
    socket = await connect(alice)
    frames = await say(socket, "draw a lighthouse at dusk")
    kinds = [f["type"] for f in frames if f["type"].startswith("tool.")]
    assert kinds == ["tool.started", "tool.preview", "tool.preview", "tool.completed"]
    previews = of_type(frames, "tool.preview")
    assert [(p["index"], p["partial"]) for p in previews] == [(0, 0), (0, 1)]
    for preview in previews:
        header, _, encoded = preview["data_url"].partition(",")
        assert header == "data:image/jpeg;base64"
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as picture:
            assert picture.format == "JPEG" and max(picture.size) <= 64
        assert (preview["width"], preview["height"]) == picture.size
    (request,) = fake_openai.image_requests()
    assert request.body is not None
    assert request.body["stream"] is True and request.body["partial_images"] == 2
    # Previews live in frames only: not in the call's row, not as images.
    invocation = await ToolInvocation.objects.aget()
    assert "data:" not in str(invocation.result) and "base64" not in str(invocation.result)
    assert await GeneratedImage.objects.acount() == 1


async def test_previews_can_be_turned_off_per_model(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer, settings: Any
) -> None:
    settings.IMAGE_PREVIEWS = {"gpt-image-test": 0}
    alice = await database_sync_to_async(make_user)("alice")
    frames = await say(await connect(alice), "draw a lighthouse at dusk")
    assert of_type(frames, "tool.preview") == [] and of_type(frames, "tool.completed")
    (request,) = fake_openai.image_requests()
    assert request.body is not None and "stream" not in request.body


async def test_n3_stores_three_images_and_counts_three_against_the_quota(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer, settings: Any
) -> None:
    settings.IMAGES_PER_DAY = 10
    settings.IMAGE_PREVIEWS = {}
    alice = await database_sync_to_async(make_user)("alice")
    frames = await say(await connect(alice), "draw three pictures of a fox")
    (completed,) = of_type(frames, "tool.completed")
    assert len(completed["images"]) == 3 and completed["image"] == completed["images"][0]
    assert completed["images_left_today"] == 7
    (request,) = fake_openai.image_requests()
    assert request.body is not None and request.body["n"] == 3
    images = [image async for image in GeneratedImage.objects.order_by("index")]
    assert [image.index for image in images] == [0, 1, 2]
    assert len({image.sha256 for image in images}) == 3  # three different pictures
    assert [image["id"] for image in completed["images"]] == [str(image.id) for image in images]
    assert await database_sync_to_async(ImageQuota.objects.remaining)(alice) == 7
    invocation = await ToolInvocation.objects.aget()
    assert invocation.result["image_ids"] == [str(image.id) for image in images]
    # Previews of each image, in order, before the call completes.
    previews = [(p["index"], p["partial"]) for p in of_type(frames, "tool.preview")]
    assert previews == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


async def test_n_beyond_the_models_allowance_is_capped_with_a_note(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer, settings: Any
) -> None:
    settings.IMAGE_MAX_N = {"gpt-image": 2}
    # A model that asks beyond the schema's maximum (models do not always read it).
    fake_openai.script_chat(
        Reply(tool_calls=[ToolCall("generate_image", {"prompt": "a fox", "n": 4})]), Reply("Done.")
    )
    alice = await database_sync_to_async(make_user)("alice")
    frames = await say(await connect(alice), "draw four pictures of a fox")
    (completed,) = of_type(frames, "tool.completed")
    assert len(completed["images"]) == 2
    assert any("at most 2" in note for note in completed["notes"])
    tools = fake_openai.chat_requests()[0].body["tools"]  # type: ignore[index]
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert schema["generate_image"]["properties"]["n"]["maximum"] == 2


async def test_n_over_what_is_left_of_the_quota_is_refused_whole(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer, settings: Any
) -> None:
    settings.IMAGES_PER_DAY = 2
    alice = await database_sync_to_async(make_user)("alice")
    frames = await say(await connect(alice), "draw three pictures of a fox")
    (failed,) = of_type(frames, "tool.failed")
    assert failed["error"]["code"] == "quota_exceeded"
    assert "Only 2" in failed["error"]["message"]
    assert fake_openai.image_requests() == []
    assert await database_sync_to_async(ImageQuota.objects.remaining)(alice) == 2


async def test_a_failed_call_of_three_gives_all_three_back(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer, settings: Any
) -> None:
    settings.IMAGES_PER_DAY = 5
    fake_openai.script_images(Fail(500), Fail(500))  # the client retries once
    alice = await database_sync_to_async(make_user)("alice")
    frames = await say(await connect(alice), "draw three pictures of a fox")
    assert of_type(frames, "tool.failed")
    assert await database_sync_to_async(ImageQuota.objects.remaining)(alice) == 5
    assert await GeneratedImage.objects.acount() == 0


class NoEdits(Handler):
    """A provider with generations but no edit endpoint (as many gateways are)."""

    def extra_route(self, method: str, path: str, body: dict[str, Any] | None) -> bool:
        if path.endswith("/images/edits"):
            self._send_error(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
            return True
        return False


async def test_a_provider_without_an_edit_endpoint_is_a_typed_tool_error(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer, settings: Any
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    socket = await connect(alice)
    first = await say(socket, "draw a lighthouse at dusk")
    with OfflineModelServer(handler=NoEdits) as no_edits:
        settings.OPENAI_IMAGE_BASE_URL = no_edits.base_url
        frames = await say(socket, "make it night", first[0]["conversation_id"])
    (failed,) = of_type(frames, "tool.failed")
    assert failed["error"]["code"] == "images_edit_not_supported"
    assert "cannot edit" in failed["error"]["message"]
    assert await GeneratedImage.objects.acount() == 1
    assert await database_sync_to_async(ImageQuota.objects.remaining)(alice) == 49


async def test_deleting_the_parent_keeps_the_edit(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    socket = await connect(alice)
    conversation_id, _ = await draw_then(socket, "make it stormy")
    parent = await GeneratedImage.objects.aget(tool_invocation__name="generate_image")
    await parent.adelete()
    child = await GeneratedImage.objects.aget()
    assert await child.parents.acount() == 0
    assert await Conversation.objects.filter(pk=conversation_id).aexists()


async def test_the_admin_image_page_shows_parents_and_children(
    make_user: Any, connect: Any, fake_openai: OfflineModelServer
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    staff = await database_sync_to_async(make_user)("moderator", is_staff=True, is_superuser=True)
    await draw_then(await connect(alice), "make it night")
    parent = await GeneratedImage.objects.aget(tool_invocation__name="generate_image")
    child = await GeneratedImage.objects.aget(tool_invocation__name="edit_image")

    def page_of(image: GeneratedImage) -> str:
        client = Client()
        client.force_login(staff)
        response = client.get(f"/admin/conversations/generatedimage/{image.pk}/change/")
        assert response.status_code == 200
        return response.content.decode()

    child_page = await database_sync_to_async(page_of)(child)
    parent_link = f"/admin/conversations/generatedimage/{parent.pk}/change/"
    assert "Edited from:" in child_page and parent_link in child_page
    parent_page = await database_sync_to_async(page_of)(parent)
    assert f"/admin/conversations/generatedimage/{child.pk}/change/" in parent_page
