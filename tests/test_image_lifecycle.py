"""Images in production: expiry, dedup, deletion, orphans, quota, options, review, admin."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import images
from conversations.models import (
    Conversation,
    GeneratedImage,
    ImageQuota,
    Message,
    ToolInvocation,
)
from offline_model import Reply, ToolCall
from tests.conftest import bucket_keys
from tests.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def signed_in(user: Any) -> Client:
    """logged_in for async tests: the login writes a session (off the event loop)."""
    return await database_sync_to_async(logged_in)(user)


async def draw(
    connect: Any,
    user: Any,
    text: str = "draw a lighthouse at dusk",
    key: str = "d1",
    conversation_id: str | None = None,
) -> list[dict]:
    socket = await connect(user)
    await socket.send(
        "message.send", client_message_id=key, text=text, conversation_id=conversation_id
    )
    return await socket.receive_until("assistant.completed", "assistant.failed")


async def test_the_redirect_is_freshly_signed_for_the_configured_lifetime_and_cached_less(
    make_user: Any, connect: Any, fake_openai: Any, s3_bucket: Any, settings: Any
) -> None:
    settings.S3_PRESIGN_SECONDS = 60
    settings.STORAGES["default"]["OPTIONS"]["querystring_expire"] = 60
    settings.STORAGES = dict(settings.STORAGES)
    user = await database_sync_to_async(make_user)()
    await draw(connect, user)
    image = await GeneratedImage.objects.aget()
    client = await signed_in(user)

    first = await database_sync_to_async(client.get)(image.get_absolute_url())
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(first["Location"]).query)
    assert query["X-Amz-Expires"] == ["60"]
    signed_at = timezone.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    assert abs((timezone.now().replace(tzinfo=None) - signed_at).total_seconds()) < 5
    assert first["Cache-Control"] == "private, max-age=30"  # shorter than the URL lives
    # Signed at request time, never stored: a later request gets a new signature.
    time.sleep(1.1)
    second = await database_sync_to_async(client.get)(image.get_absolute_url())
    assert second["Location"] != first["Location"]
    stored = await database_sync_to_async(lambda: list(GeneratedImage.objects.values()))()
    assert "X-Amz" not in json.dumps(stored, default=str)
    # (moto does not enforce X-Amz-Expires: the lapse itself is the next test's, on SeaweedFS.)


async def test_a_signed_url_stops_working_when_it_expires(
    make_user: Any, connect: Any, fake_openai: Any, s3_bucket: Any, settings: Any
) -> None:
    if s3_bucket.s3_kind == "moto":
        pytest.skip("moto does not enforce X-Amz-Expires; SeaweedFS does")
    settings.STORAGES["default"]["OPTIONS"]["querystring_expire"] = 2
    settings.STORAGES = dict(settings.STORAGES)
    user = await database_sync_to_async(make_user)()
    await draw(connect, user)
    image = await GeneratedImage.objects.aget()
    client = await signed_in(user)
    signed = (await database_sync_to_async(client.get)(image.get_absolute_url()))["Location"]
    assert signed.startswith(s3_bucket.object_url_prefix)

    def fetch() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(signed, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read()

    status, body = await asyncio.to_thread(fetch)
    assert status == 200 and hashlib.sha256(body).hexdigest() == image.sha256

    async def expired() -> bool:
        return (await asyncio.to_thread(fetch))[0] != 200

    # It lives 2 s; allow for a slow machine.
    await eventually(expired, timeout=20, what="the signed URL's expiry")
    status, body = await asyncio.to_thread(fetch)
    assert status == 403 and b"expired" in body
    # The app URL signs afresh: the image is still there for its owner.
    again = (await database_sync_to_async(client.get)(image.get_absolute_url()))["Location"]
    assert (await asyncio.to_thread(lambda: urllib.request.urlopen(again, timeout=5).status)) == 200


async def test_the_same_bytes_are_stored_once_per_user(
    make_user: Any, connect: Any, fake_openai: Any, s3_bucket: Any
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    first = await draw(connect, alice, key="a1")
    await draw(connect, alice, key="a2", conversation_id=first[0]["conversation_id"])
    await draw(connect, bob, key="b1")

    alices = [i async for i in GeneratedImage.objects.filter(user=alice)]
    bobs = [i async for i in GeneratedImage.objects.filter(user=bob)]
    assert len(alices) == 2 and alices[0].sha256 == alices[1].sha256 == bobs[0].sha256
    assert alices[0].file.name == alices[1].file.name  # one object for alice's two rows
    assert bobs[0].file.name != alices[0].file.name  # never shared across users
    assert bucket_keys(s3_bucket) == sorted({alices[0].file.name, bobs[0].file.name})

    # Deleting one of alice's rows keeps the object her other row needs.
    await database_sync_to_async(alices[0].delete)()
    assert alices[1].file.name in bucket_keys(s3_bucket)
    await database_sync_to_async(alices[1].delete)()
    assert bucket_keys(s3_bucket) == [bobs[0].file.name]


@pytest.mark.parametrize("what", ["message", "conversation", "user"])
async def test_deleting_a_message_a_conversation_or_a_user_deletes_their_objects(
    make_user: Any, connect: Any, fake_openai: Any, s3_bucket: Any, what: str
) -> None:
    user = await database_sync_to_async(make_user)()
    frames = await draw(connect, user)
    assert len(bucket_keys(s3_bucket)) == 1
    if what == "message":
        target = await Message.objects.aget(pk=frames[0]["assistant_message_id"])
    elif what == "conversation":
        target = await Conversation.objects.aget()
    else:
        target = user
    await database_sync_to_async(target.delete)()
    assert await GeneratedImage.objects.acount() == 0
    assert bucket_keys(s3_bucket) == []


def png(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_orphan_command_finds_both_kinds_and_deletes_only_with_apply(
    make_user: Any, s3_bucket: Any, capsys: Any
) -> None:
    user = make_user()
    conversation = Conversation.objects.create(user=user)
    answer = conversation.messages.create(role="assistant", text="x")

    def image_row(key: str) -> GeneratedImage:
        invocation = ToolInvocation.objects.create(
            message=answer, call_id=key, name="generate_image", status="complete"
        )
        return GeneratedImage.objects.create(
            user=user,
            conversation=conversation,
            tool_invocation=invocation,
            file=key,
            sha256=key,
            bytes=1,
            width=8,
            height=8,
            model="m",
            prompt="p",
        )

    kept = image_row(default_storage.save("images/aa/kept.png", ContentFile(png(1))))
    lost = image_row("images/bb/lost.png")  # its object never existed
    stray = default_storage.save("images/cc/stray.png", ContentFile(png(2)))

    call_command("cleanup_images", "--min-age", "0")
    dry = capsys.readouterr().out
    assert f"Would delete object without a row: {stray}" in dry
    assert f"Would delete row without an object: image {lost.pk}" in dry
    assert "dry run" in dry
    assert sorted(bucket_keys(s3_bucket)) == sorted([kept.file.name, stray])
    assert GeneratedImage.objects.count() == 2

    # A fresh object may belong to an upload whose row is a moment away: spared.
    call_command("cleanup_images", "--apply")
    assert stray in bucket_keys(s3_bucket)

    call_command("cleanup_images", "--apply", "--min-age", "0")
    assert bucket_keys(s3_bucket) == [kept.file.name]
    assert list(GeneratedImage.objects.values_list("pk", flat=True)) == [kept.pk]
    invocation = ToolInvocation.objects.get(call_id="images/bb/lost.png")
    assert invocation.status == "failed" and "no longer available" in invocation.error
    call_command("cleanup_images")
    assert "0 object(s) without a row, 0 row(s) without an object" in capsys.readouterr().out


async def test_the_daily_quota_stops_images_but_not_the_answer(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any, local_storage: Any
) -> None:
    settings.IMAGES_PER_DAY = 2
    user = await database_sync_to_async(make_user)()
    first = await draw(connect, user, key="k1")
    done = next(f for f in first if f["type"] == "tool.completed")
    assert done["images_left_today"] == 1
    conversation_id = first[0]["conversation_id"]
    await draw(connect, user, key="k2", conversation_id=conversation_id)
    third = await draw(connect, user, key="k3", conversation_id=conversation_id)

    failed = next(f for f in third if f["type"] == "tool.failed")
    assert failed["error"]["code"] == "quota_exceeded"
    assert "all 2 images for today" in failed["error"]["message"]
    assert third[-1]["type"] == "assistant.completed"
    assert "all 2 images" in fake_openai.chat_requests()[-1].body["messages"][-1]["content"]
    assert await GeneratedImage.objects.acount() == 2
    assert await database_sync_to_async(ImageQuota.objects.remaining)(user) == 0


async def test_staff_are_exempt_and_failed_images_give_their_quota_back(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any, local_storage: Any
) -> None:
    from offline_model import Fail

    settings.IMAGES_PER_DAY = 1
    user = await database_sync_to_async(make_user)("alice")
    fake_openai.script_images(Fail(500, "boom"), Fail(500, "boom"))  # and its retry
    await draw(connect, user, key="f1")  # fails: the reservation is returned
    assert await database_sync_to_async(ImageQuota.objects.remaining)(user) == 1

    staff = await database_sync_to_async(make_user)("mod", is_staff=True)
    for key in ("s1", "s2"):
        frames = await draw(connect, staff, key=key)
        done = next(f for f in frames if f["type"] == "tool.completed")
        assert done["images_left_today"] is None  # unlimited


@pytest.mark.skipif(
    connection.vendor == "sqlite",
    reason="needs PostgreSQL: the in-memory test SQLite locks tables with no busy wait "
    "(and SQLite serialises writers anyway)",
)
def test_a_concurrent_burst_cannot_overspend_the_quota(make_user: Any, settings: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    settings.IMAGES_PER_DAY = 5
    user = make_user()

    def reserve(_: int) -> bool:
        try:
            images.reserve_quota(user)
            return True
        except images.ToolError:
            return False
        finally:
            connections.close_all()

    with ThreadPoolExecutor(8) as pool:
        granted = list(pool.map(reserve, range(20)))
    assert granted.count(True) == 5
    assert ImageQuota.objects.get(user=user).used == 5


async def test_unsupported_options_are_dropped_with_a_note_and_supported_ones_passed(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any, local_storage: Any
) -> None:
    settings.IMAGE_MODEL = "dall-e-3"
    settings.IMAGE_SIZE = "1024x1024"
    settings.IMAGE_PRICES = {"hd": images.Decimal("0.08"), "*": images.Decimal("0.04")}
    fake_openai.script_chat(
        Reply(
            text="Drawing.",
            tool_calls=[
                ToolCall(
                    arguments={
                        "prompt": "a fox",
                        "size": "999x999",
                        "quality": "hd",
                        "style": "natural",
                    }
                )
            ],
        ),
        Reply(text="Done."),
    )
    user = await database_sync_to_async(make_user)()
    frames = await draw(connect, user)

    done = next(f for f in frames if f["type"] == "tool.completed")
    assert done["notes"] == ["size '999x999' is not supported by dall-e-3; used 1024x1024."]
    sent = fake_openai.image_requests()[-1].body
    assert (sent["size"], sent["quality"], sent["style"]) == ("1024x1024", "hd", "natural")
    image = await GeneratedImage.objects.aget()
    assert (image.size, image.quality, image.style) == ("1024x1024", "hd", "natural")
    assert image.cost_usd == images.Decimal("0.08")
    told = json.loads(fake_openai.chat_requests()[-1].body["messages"][-1]["content"])
    assert told["notes"] == done["notes"]
    # The schema offered to the model lists only what dall-e-3 accepts.
    schema = fake_openai.chat_requests()[0].body["tools"][0]["function"]["parameters"]
    assert schema["properties"]["size"]["enum"] == ["1024x1024", "1792x1024", "1024x1792"]
    assert schema["properties"]["style"]["enum"] == ["vivid", "natural"]


def test_a_model_without_options_gets_a_prompt_only_schema(settings: Any) -> None:
    settings.IMAGE_MODEL, settings.IMAGE_SIZE = "some-local-diffusion", "512x512"
    settings.IMAGE_SIZES = settings.IMAGE_QUALITIES = settings.IMAGE_STYLES = []
    properties = images.tool_schema()["function"]["parameters"]["properties"]
    assert list(properties) == ["prompt"]
    request = images.parse_arguments('{"prompt": "x", "quality": "hd"}')
    assert (request.size, request.quality) == ("512x512", "")
    assert request.notes == ["quality 'hd' is not supported by some-local-diffusion; left out."]


async def test_a_hidden_image_is_not_served_to_its_owner_and_the_chat_says_why(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any
) -> None:
    user = await database_sync_to_async(make_user)("alice")
    moderator = await database_sync_to_async(make_user)("mod", is_staff=True, is_superuser=True)
    await draw(connect, user)
    image = await GeneratedImage.objects.aget()

    response = await database_sync_to_async((await signed_in(moderator)).post)(
        "/admin/conversations/generatedimage/",
        {"action": "mark_hidden", "_selected_action": [str(image.pk)]},
    )
    assert response.status_code == 302
    await image.arefresh_from_db()
    assert image.review_status == "hidden" and image.reviewed_by_id == moderator.pk
    assert image.reviewed_at is not None

    owner = await signed_in(user)
    assert (await database_sync_to_async(owner.get)(image.get_absolute_url())).status_code == 404
    page = (await database_sync_to_async(owner.get)(f"/c/{image.conversation_id}/")).content
    assert b"removed by a moderator" in page and f"/images/{image.pk}/".encode() not in page
    staff_view = await database_sync_to_async((await signed_in(moderator)).get)(
        image.get_absolute_url()
    )
    assert staff_view.status_code == 200  # moderators still see it


def many_images(user: Any, count: int) -> None:
    conversation = Conversation.objects.create(user=user, title="many")
    answer = conversation.messages.create(role="assistant", text="x")
    for n in range(count):
        invocation = ToolInvocation.objects.create(
            message=answer, call_id=f"c{n}", name="generate_image", status="complete"
        )
        GeneratedImage.objects.create(
            user=user,
            conversation=conversation,
            tool_invocation=invocation,
            file=f"images/x/{n}.png",
            sha256=f"{n}",
            bytes=1,
            width=8,
            height=8,
            model="m",
            prompt=f"prompt {n}",
            revised_prompt=f"revised {n}",
            created_at=timezone.now() - timedelta(minutes=n),
        )


@pytest.mark.parametrize(
    "url",
    [
        "/admin/conversations/generatedimage/",
        "/admin/conversations/generatedimage/?review=unreviewed&q=prompt",
    ],
)
def test_the_review_list_costs_the_same_queries_for_1_and_50_rows(make_user: Any, url: str) -> None:
    moderator = make_user("mod", is_staff=True, is_superuser=True)
    client = logged_in(moderator)
    counts = []
    for total in (1, 50):
        many_images(make_user(f"user{total}"), 1 if total == 1 else 49)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200
        counts.append(len(queries))
        page = response.content.decode()
        assert page.count('<img src="/images/') == GeneratedImage.objects.count()
    assert counts[0] == counts[1], counts
    assert "revised 0" in page and "user50" in page
    # Newest first.
    assert page.index("prompt 0<") < page.index("prompt 48<")


def test_the_conversation_admin_reads_like_the_chat(make_user: Any) -> None:
    moderator = make_user("mod", is_staff=True, is_superuser=True)
    user = make_user("alice")
    many_images(user, 2)
    conversation = Conversation.objects.get()
    page = (
        logged_in(moderator)
        .get(f"/admin/conversations/conversation/{conversation.pk}/change/")
        .content.decode()
    )
    assert page.count('src="/images/') == 2 and "prompt 1" in page
    assert get_user_model().objects.filter(username="alice").exists()
