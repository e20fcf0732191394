"""Images people attach: upload validation, sending, serving, deletion, the model's view."""

from __future__ import annotations

import base64
import io
import struct
import uuid
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.utils import timezone
from PIL import Image

from conversations import attachments, images
from conversations.models import (
    ApiToken,
    Attachment,
    Conversation,
    GeneratedImage,
    ImageQuota,
    Message,
    PendingDeletion,
)
from offline_model import Reply

pytestmark = pytest.mark.django_db(transaction=True)


# --- pictures to upload --------------------------------------------------------------


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def noisy_png(width: int, height: int) -> bytes:
    """A PNG that does not compress (random pixels): its size is about w*h*3 bytes."""
    import os

    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "PNG")
    return out.getvalue()


def jpeg_with_gps() -> bytes:
    picture = Image.new("RGB", (80, 60), (10, 120, 200))
    exif = Image.Exif()
    exif[0x010F] = "SpyCam Industries"  # Make
    exif[0x0110] = "Model X-Secret"  # Model
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (52.0, 22.0, 7.5)
    gps[3] = "E"
    gps[4] = (4.0, 53.0, 41.0)
    out = io.BytesIO()
    picture.save(out, format="JPEG", exif=exif)
    return out.getvalue()


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header declares 1.6 billion pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def logged_in(user: Any, **options: Any) -> Client:
    client = Client(**options)
    client.force_login(user)
    return client


def post_file(client: Client, data: bytes, name: str = "photo.png", **extra: Any) -> Any:
    upload = ContentFile(data, name=name)
    return client.post("/attachments/", {"file": upload}, **extra)


def stored_uploads(media: Path) -> list[Path]:
    return [path for path in (media / "uploads").rglob("*") if path.is_file()]


def upload_for(user: Any, data: bytes | None = None) -> Attachment:
    return attachments.store(user, io.BytesIO(data or png()))


# --- the upload ------------------------------------------------------------------------


def test_an_upload_is_stored_privately_and_described(make_user: Any, local_storage: Path) -> None:
    alice = make_user("alice")
    response = post_file(logged_in(alice), png(64, 48))

    assert response.status_code == 201
    body = response.json()
    item = Attachment.objects.get()
    assert body["attachment"] == {
        "id": str(item.id),
        "url": f"/attachments/{item.id}/",
        "width": 64,
        "height": 48,
        "bytes": item.bytes,
    }
    assert item.owner == alice and item.message is None and item.conversation is None
    # An unguessable key of its own, not the file's name; only the key is in the row.
    assert item.file.name.startswith("uploads/") and item.id.hex in item.file.name
    assert "photo" not in item.file.name
    assert stored_uploads(local_storage) == [local_storage / item.file.name]
    # Counted against the day's image allowance (docs/images.md).
    assert body["images_left_today"] == ImageQuota.objects.remaining(alice)
    assert ImageQuota.objects.get(user=alice).used == 1


@pytest.mark.parametrize(
    ("case", "code", "status"),
    [
        ("over the byte limit", "upload_too_large", 413),
        ("over the pixel limit", "upload_too_many_pixels", 413),
        ("a text file named .png", "upload_not_image", 415),
        ("a BMP", "upload_not_image", 415),
        ("a decompression bomb", "upload_bomb", 413),
        ("a truncated PNG", "upload_not_image", 415),
    ],
)
def test_a_bad_upload_is_refused_with_a_clear_error_and_nothing_is_stored(
    make_user: Any, local_storage: Path, settings: Any, case: str, code: str, status: int
) -> None:
    settings.UPLOAD_MAX_BYTES = 20_000
    settings.UPLOAD_MAX_PIXELS = 100 * 100
    bmp = io.BytesIO()
    Image.new("RGB", (8, 8)).save(bmp, format="BMP")
    data = {
        "over the byte limit": noisy_png(90, 90),  # about 24 KB, 8,100 pixels
        "over the pixel limit": png(101, 100),
        "a text file named .png": b"hello, I am not a picture\n" * 10,
        "a BMP": bmp.getvalue(),
        "a decompression bomb": bomb_png(),
        "a truncated PNG": png(90, 90)[:60],
    }[case]
    alice = make_user("alice")

    response = post_file(logged_in(alice), data, "picture.png")

    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]  # a sentence for a person
    assert not Attachment.objects.exists()
    assert not stored_uploads(local_storage) if (local_storage / "uploads").exists() else True
    assert ImageQuota.objects.remaining(alice) == settings.IMAGES_PER_DAY  # nothing spent


def test_a_body_declared_far_over_the_limit_is_refused_before_it_is_read(
    make_user: Any, settings: Any
) -> None:
    settings.UPLOAD_MAX_BYTES = 2048
    response = post_file(logged_in(make_user()), noisy_png(200, 200))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "upload_too_large"
    assert not Attachment.objects.exists()


def test_metadata_is_stripped_and_the_picture_kept(make_user: Any, local_storage: Path) -> None:
    original = jpeg_with_gps()
    with Image.open(io.BytesIO(original)) as check:  # the test's own premise
        assert check.getexif().get_ifd(0x8825)
    response = post_file(logged_in(make_user()), original, "holiday.jpg")
    assert response.status_code == 201

    item = Attachment.objects.get()
    stored = (local_storage / item.file.name).read_bytes()
    assert b"SpyCam" not in stored and b"X-Secret" not in stored
    with Image.open(io.BytesIO(stored)) as cleaned:
        assert cleaned.format == "JPEG"
        assert cleaned.size == (80, 60)
        assert len(cleaned.getexif()) == 0
        assert "exif" not in cleaned.info
        red, green, blue = cleaned.convert("RGB").getpixel((40, 30))
        assert abs(red - 10) < 8 and abs(green - 120) < 8 and abs(blue - 200) < 8


def test_a_gif_keeps_its_first_frame_as_a_png(make_user: Any, local_storage: Path) -> None:
    frames = [Image.new("RGB", (20, 20), color) for color in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    response = post_file(logged_in(make_user()), out.getvalue(), "anim.gif")
    assert response.status_code == 201
    item = Attachment.objects.get()
    with Image.open(local_storage / item.file.name) as stored:
        assert stored.format == "PNG"
        assert stored.convert("RGB").getpixel((10, 10)) == (255, 0, 0)


def test_a_session_upload_needs_the_csrf_token_and_a_token_upload_does_not(
    make_user: Any,
) -> None:
    alice = make_user("alice")
    strict = logged_in(alice, enforce_csrf_checks=True)
    assert post_file(strict, png()).status_code == 403
    assert not Attachment.objects.exists()

    _, raw = ApiToken.issue(alice, "cli")
    program = Client(enforce_csrf_checks=True)
    response = post_file(program, png(), HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 201
    assert Attachment.objects.get().owner == alice

    refused = post_file(program, png(), HTTP_AUTHORIZATION="Bearer cit_nope")
    assert refused.status_code == 401
    assert Attachment.objects.count() == 1


def test_an_upload_beyond_the_daily_quota_is_refused(make_user: Any, settings: Any) -> None:
    settings.IMAGES_PER_DAY = 1
    client = logged_in(make_user())
    assert post_file(client, png()).status_code == 201
    refused = post_file(client, png())
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert Attachment.objects.count() == 1


# --- serving ---------------------------------------------------------------------------


def test_an_upload_is_served_to_its_owner_and_staff_only(make_user: Any) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    staff = make_user("mod", is_staff=True)
    item = upload_for(alice)
    url = item.get_absolute_url()

    mine = logged_in(alice).get(url)
    assert mine.status_code == 200
    assert mine["Content-Type"] == "image/png"
    assert b"".join(mine.streaming_content) == default_storage.open(item.file.name).read()
    assert logged_in(staff).get(url).status_code == 200
    assert logged_in(bob).get(url).status_code == 404
    assert logged_in(bob).get(f"{url}thumb/").status_code == 404
    assert Client().get(url).status_code == 302  # to the login page


# --- sending ---------------------------------------------------------------------------


async def test_a_message_carries_its_attachments_and_the_model_hears_of_them(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    fake_openai.script_chat(Reply(tokens=["Nice", " picture."]))
    alice = await database_sync_to_async(make_user)("alice")
    item = await database_sync_to_async(upload_for)(alice)
    socket = await connect(alice)

    await socket.send(
        "message.send", client_message_id="a1", text="what is this?", attachments=[str(item.id)]
    )
    frames = await socket.receive_until("assistant.completed")

    accepted = next(f for f in frames if f["type"] == "message.accepted")
    assert accepted["attachments"] == [item.summary()]
    await item.arefresh_from_db()
    assert item.message_id == accepted["message_id"]
    assert str(item.conversation_id) == accepted["conversation_id"]
    # Without vision the model is told the id (an edit can use it), never given bytes.
    last = fake_openai.chat_requests()[-1].body["messages"][-1]
    assert last == {
        "role": "user",
        "content": f"what is this?\n\n[image attachment {item.id}]",
    }


async def test_an_attached_photo_can_be_edited_the_provider_gets_its_stored_bytes(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    """ "Attach a photo and ask for a variation", with the built-in model unscripted."""
    alice = await database_sync_to_async(make_user)("alice")
    item = await database_sync_to_async(upload_for)(alice, png(64, 64, (20, 120, 200)))
    socket = await connect(alice)

    await socket.send(
        "message.send",
        client_message_id="e1",
        text="make a variation of this",
        attachments=[str(item.id)],
    )
    frames = await socket.receive_until("assistant.completed")

    completed = next(f for f in frames if f["type"] == "tool.completed")
    (request,) = fake_openai.edit_requests()
    stored = await database_sync_to_async(attachments.read)(item)
    assert request.files[0][3] == stored  # the cleaned upload, read from storage
    image = await GeneratedImage.objects.aget(pk=completed["image"]["id"])
    await item.arefresh_from_db()
    assert image.user_id == alice.pk and image.conversation_id == item.conversation_id
    assert "make a variation of this" in image.prompt


async def test_with_vision_the_model_gets_the_picture_as_an_image_part(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    settings.VISION = True
    fake_openai.script_chat(Reply(tokens=["A red square."]))
    alice = await database_sync_to_async(make_user)("alice")
    item = await database_sync_to_async(upload_for)(alice, png(32, 32))
    socket = await connect(alice)

    await socket.send(
        "message.send", client_message_id="v1", text="describe it", attachments=[str(item.id)]
    )
    await socket.receive_until("assistant.completed")

    content = fake_openai.chat_requests()[-1].body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": f"describe it\n\n[image attachment {item.id}]"}
    assert content[1]["type"] == "image_url"
    url = content[1]["image_url"]["url"]
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    stored = await database_sync_to_async(attachments.read)(item)
    assert base64.b64decode(url[len(prefix) :]) == stored
    # The data URL was built for the request: it is in no row.
    message = await Message.objects.aget(role="user")
    assert "base64" not in message.text


@pytest.mark.parametrize("whose", ["another user's", "an already sent", "a made-up"])
async def test_a_send_with_an_attachment_that_is_not_mine_stores_nothing(
    make_user: Any, connect: Any, fake_openai: Any, whose: str
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    owner = bob if whose == "another user's" else alice
    item = await database_sync_to_async(upload_for)(owner)
    socket = await connect(alice)
    if whose == "an already sent":
        await socket.send(
            "message.send", client_message_id="first", text="one", attachments=[str(item.id)]
        )
        await socket.receive_until("assistant.completed")
    ids = [str(uuid.uuid4()) if whose == "a made-up" else str(item.id)]
    before = await Message.objects.acount(), await Conversation.objects.acount()

    await socket.send("message.send", client_message_id="x1", text="look", attachments=ids)
    frame = await socket.receive_until("error")

    assert frame[-1]["code"] == "attachment_not_found"
    assert frame[-1]["ref"] == "x1"
    assert (await Message.objects.acount(), await Conversation.objects.acount()) == before
    await item.arefresh_from_db()
    if whose == "another user's":
        assert item.message_id is None  # bob's upload is untouched


async def test_too_many_attachments_are_refused_as_a_frame(
    make_user: Any, connect: Any, settings: Any
) -> None:
    settings.UPLOADS_PER_MESSAGE = 1
    alice = await database_sync_to_async(make_user)("alice")
    socket = await connect(alice)
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    await socket.send("message.send", client_message_id="m", text="two", attachments=ids)
    frame = await socket.receive_until("error")
    assert frame[-1]["code"] == "too_many_attachments"
    assert not await Message.objects.aexists()


# --- deletion --------------------------------------------------------------------------


def sent_attachment(user: Any) -> tuple[Conversation, Message, Attachment]:
    item = upload_for(user)
    conversation, question, _answer, _, _ = Conversation.objects.start_turn(
        user, None, "k1", "look at this", [item.id]
    )
    item.refresh_from_db()
    return conversation, question, item


def test_attachments_are_deleted_with_their_conversation_object_and_all(
    make_user: Any, local_storage: Path
) -> None:
    conversation, _, item = sent_attachment(make_user())
    stored = local_storage / item.file.name
    assert stored.exists()

    conversation.delete()

    assert not Attachment.objects.exists()
    assert not stored.exists()
    assert not PendingDeletion.objects.exists()  # nothing owed


def test_attachments_are_deleted_with_their_message(make_user: Any, local_storage: Path) -> None:
    _, question, item = sent_attachment(make_user())
    stored = local_storage / item.file.name
    question.delete()
    assert not Attachment.objects.filter(pk=item.pk).exists()
    assert not stored.exists()


def test_unattached_uploads_older_than_a_day_are_cleaned(
    make_user: Any, local_storage: Path
) -> None:
    alice = make_user()
    old, fresh = upload_for(alice), upload_for(alice)
    _, _, sent = sent_attachment(alice)
    long_ago = timezone.now() - timedelta(days=2)
    Attachment.objects.filter(pk__in=[old.pk, sent.pk]).update(created_at=long_ago)

    assert attachments.purge_unattached() == 1

    assert set(Attachment.objects.values_list("pk", flat=True)) == {fresh.pk, sent.pk}
    assert not (local_storage / old.file.name).exists()
    assert (local_storage / sent.file.name).exists()


# --- edit inputs -----------------------------------------------------------------------


def test_an_edit_can_take_my_sent_attachment_and_nothing_else(make_user: Any) -> None:
    """images.find_sources, the edit tool's one lookup, reads attached images too."""
    alice, bob = make_user("alice"), make_user("bob")
    conversation, _, item = sent_attachment(alice)

    assert images.find_sources(alice, conversation.id, [str(item.id)]) == [item]
    assert attachments.read(item)[:8] == b"\x89PNG\r\n\x1a\n"

    unsent = upload_for(alice)
    other_conversation = Conversation.objects.create(user=alice)
    for user, where, ids in [
        (bob, conversation, [item.id]),  # someone else's
        (alice, other_conversation, [item.id]),  # another conversation
        (alice, conversation, [unsent.id]),  # never sent
        (alice, conversation, [uuid.uuid4()]),  # missing
    ]:
        with pytest.raises(images.ToolError) as refused:
            images.find_sources(user, where.id, [str(i) for i in ids])
        assert refused.value.code == "image_not_found"


# --- pages -----------------------------------------------------------------------------


def test_the_chat_page_shows_a_sent_attachment_as_a_thumbnail(make_user: Any) -> None:
    alice = make_user()
    conversation, _, item = sent_attachment(alice)
    page = logged_in(alice).get(conversation.get_absolute_url()).content.decode()
    assert f'src="/attachments/{item.id}/thumb/"' in page
    assert f'href="/attachments/{item.id}/"' in page

    thumb = logged_in(alice).get(f"/attachments/{item.id}/thumb/")
    assert thumb.status_code == 200
    assert thumb["Content-Type"] == "image/webp"
