"""Generated images: object storage, the database row, and the app's image URL."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import urllib.request
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from conversations.models import Conversation, GeneratedImage, Message, ToolInvocation
from tests.conftest import bucket_keys

pytestmark = pytest.mark.django_db(transaction=True)


async def draw(connect: Any, user: Any, text: str = "draw a lighthouse at dusk") -> list[dict]:
    socket = await connect(user)
    await socket.send("message.send", client_message_id="d1", text=text)
    return await socket.receive_until("assistant.completed", "assistant.failed")


def owner_client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def get_as(user: Any, url: str, **extra: Any) -> Any:
    """A GET through Django's test client, logged in as `user` (off the event loop)."""
    return await database_sync_to_async(lambda: owner_client(user).get(url, **extra))()


async def test_on_s3_the_image_is_uploaded_and_the_row_holds_only_the_key(
    make_user: Any, connect: Any, fake_openai: Any, s3_bucket: Any
) -> None:
    user = await database_sync_to_async(make_user)()
    frames = await draw(connect, user)
    assert frames[-1]["type"] == "assistant.completed"

    image = await GeneratedImage.objects.aget()
    assert bucket_keys(s3_bucket) == [image.file.name]
    assert image.file.name.startswith("images/") and image.file.name.endswith(".png")
    assert "lighthouse" not in image.file.name  # keys never come from user text
    body = s3_bucket.get_object(Bucket=s3_bucket.bucket_name, Key=image.file.name)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == image.sha256
    assert len(body) == image.bytes
    # Nothing in the database holds bytes, base64 or a URL of the bucket.
    rows = await database_sync_to_async(dump_rows)()
    assert "X-Amz" not in rows and "iVBORw0KGgo" not in rows
    assert s3_bucket.bucket_name not in rows


def dump_rows() -> str:
    return json.dumps(
        [
            list(model.objects.values())
            for model in (Conversation, Message, ToolInvocation, GeneratedImage)
        ],
        default=str,
    )


async def test_the_owner_follows_the_app_url_to_the_same_bytes_and_others_cannot(
    make_user: Any, connect: Any, fake_openai: Any, s3_bucket: Any, settings: Any
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    mallory = await database_sync_to_async(make_user)("mallory")
    await draw(connect, alice)
    image = await GeneratedImage.objects.aget()

    response = await get_as(alice, image.get_absolute_url())
    assert response.status_code == 302
    signed = response["Location"]
    assert signed.startswith(s3_bucket.object_url_prefix) and "X-Amz-Signature" in signed
    assert "private" in response["Cache-Control"]
    assert f"max-age={settings.S3_PRESIGN_SECONDS // 2}" in response["Cache-Control"]
    with urllib.request.urlopen(signed, timeout=10) as fetched:  # real HTTP to the S3 server
        assert hashlib.sha256(fetched.read()).hexdigest() == image.sha256

    # The bucket itself is private: the same object without a signature is refused.
    unsigned = signed.split("?")[0]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=10)
    assert refused.value.code == 403

    # "Save as" survives the cross-origin redirect: the signature asks S3 for it.
    saving = await get_as(alice, image.get_absolute_url() + "?download=1")
    with urllib.request.urlopen(saving["Location"], timeout=10) as fetched:
        disposition = fetched.headers["Content-Disposition"]
    assert disposition == f'attachment; filename="chatimg-{str(image.pk)[:8]}.png"'

    other = await get_as(mallory, image.get_absolute_url())
    assert other.status_code == 404
    anonymous = await database_sync_to_async(Client().get)(image.get_absolute_url())
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]


async def test_staff_can_view_any_image(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    staff = await database_sync_to_async(make_user)("moderator", is_staff=True)
    await draw(connect, alice)
    image = await GeneratedImage.objects.aget()
    response = await get_as(staff, image.get_absolute_url())
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert hashlib.sha256(b"".join(response.streaming_content)).hexdigest() == image.sha256


async def test_on_local_storage_the_app_url_serves_the_file_to_its_owner_only(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    mallory = await database_sync_to_async(make_user)("mallory")
    await draw(connect, alice)
    image = await GeneratedImage.objects.aget()
    mine = await get_as(alice, image.get_absolute_url())
    assert mine.status_code == 200
    assert hashlib.sha256(b"".join(mine.streaming_content)).hexdigest() == image.sha256
    theirs = await get_as(mallory, image.get_absolute_url())
    assert theirs.status_code == 404


async def test_a_storage_outage_fails_the_tool_and_leaves_no_row(
    make_user: Any, connect: Any, fake_openai: Any, s3_bucket: Any, settings: Any
) -> None:
    # Every upload is refused: moto refuses a bucket that does not exist; SeaweedFS
    # creates one on demand but refuses a wrong secret key (moto checks no keys).
    settings.STORAGES["default"]["OPTIONS"]["bucket_name"] = "no-such-bucket"
    settings.STORAGES["default"]["OPTIONS"]["secret_key"] = "wrong-secret"
    settings.STORAGES = dict(settings.STORAGES)
    user = await database_sync_to_async(make_user)()
    frames = await draw(connect, user)

    failed = next(f for f in frames if f["type"] == "tool.failed")
    assert failed["error"]["code"] == "storage_unavailable"
    assert frames[-1]["type"] == "assistant.completed"
    assert await GeneratedImage.objects.acount() == 0
    assert (await ToolInvocation.objects.aget()).status == "failed"
    assert bucket_keys(s3_bucket) == []


async def test_deleting_a_conversation_deletes_its_image_objects(
    make_user: Any, connect: Any, fake_openai: Any, s3_bucket: Any
) -> None:
    user = await database_sync_to_async(make_user)()
    await draw(connect, user)
    conversation = await Conversation.objects.aget()
    assert len(bucket_keys(s3_bucket)) == 1

    response = await database_sync_to_async(
        lambda: owner_client(user).post(f"/c/{conversation.pk}/delete/")
    )()
    assert response.status_code == 302
    assert await GeneratedImage.objects.acount() == 0
    assert bucket_keys(s3_bucket) == []


async def test_with_the_s3_server_down_the_tool_fails_and_nothing_is_left_behind(
    make_user: Any, connect: Any, fake_openai: Any, s3_bucket: Any, settings: Any
) -> None:
    from moto.server import ThreadedMotoServer

    # A second S3 server, used by the app, that goes down before the upload.
    doomed = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    doomed.start()
    host, port = doomed.get_host_and_port()
    options = settings.STORAGES["default"]["OPTIONS"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            **settings.STORAGES["default"],
            "OPTIONS": {**options, "endpoint_url": f"http://{host}:{port}"},
        },
    }
    doomed.stop()

    user = await database_sync_to_async(make_user)()
    frames = await draw(connect, user)
    failed = next(f for f in frames if f["type"] == "tool.failed")
    assert failed["error"] == {
        "code": "storage_unavailable",
        "message": "The image could not be saved; try again.",
    }
    assert frames[-1]["type"] == "assistant.completed"  # the model was told; the turn went on
    assert await GeneratedImage.objects.acount() == 0
    invocation = await ToolInvocation.objects.aget()
    assert invocation.status == "failed" and "could not be saved" in invocation.error
    # moto keeps its state in this process: the bucket behind both servers is empty.
    assert bucket_keys(s3_bucket) == []


async def test_a_program_can_fetch_its_images_with_its_api_token(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any
) -> None:
    from conversations.models import ApiToken

    alice = await database_sync_to_async(make_user)("alice")
    mallory = await database_sync_to_async(make_user)("mallory")
    await draw(connect, alice)
    image = await GeneratedImage.objects.aget()
    token, raw = await database_sync_to_async(ApiToken.issue)(alice, "cli")
    _, other = await database_sync_to_async(ApiToken.issue)(mallory, "cli")

    def get(bearer: str) -> Any:
        return Client().get(image.get_absolute_url(), HTTP_AUTHORIZATION=f"Bearer {bearer}")

    mine = await database_sync_to_async(get)(raw)
    assert mine.status_code == 200
    assert hashlib.sha256(b"".join(mine.streaming_content)).hexdigest() == image.sha256
    assert (await database_sync_to_async(get)(other)).status_code == 404
    await database_sync_to_async(token.revoke)()
    refused = await database_sync_to_async(get)(raw)
    assert refused.status_code == 401 and refused["WWW-Authenticate"] == "Bearer"


async def test_a_provider_url_is_fetched_and_stored_like_base64(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any, settings: Any
) -> None:
    settings.IMAGE_RESPONSE_FORMAT = "url"
    # The fake serves its files on loopback: allowed as a self-hosted provider's would be.
    settings.IMAGE_FETCH_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.1/32")]
    user = await database_sync_to_async(make_user)()
    frames = await draw(connect, user)
    assert any(f["type"] == "tool.completed" for f in frames)
    assert fake_openai.image_requests()[-1].body["response_format"] == "url"
    # The bytes were downloaded from the provider's URL (a GET the fake served).
    assert any(r.method == "GET" and r.path.startswith("/files/") for r in fake_openai.requests)
    image = await GeneratedImage.objects.aget()
    assert (local_storage / image.file.name).read_bytes()[:4] == b"\x89PNG"
    assert "http" not in image.file.name


async def test_an_oversized_image_from_a_provider_url_is_refused(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any, settings: Any
) -> None:
    settings.IMAGE_RESPONSE_FORMAT = "url"
    settings.IMAGE_FETCH_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.1/32")]
    settings.IMAGE_MAX_BYTES = 2048  # a 256x256 PNG of the fake is larger
    user = await database_sync_to_async(make_user)()
    frames = await draw(connect, user)
    failed = next(f for f in frames if f["type"] == "tool.failed")
    assert failed["error"]["code"] == "image_too_large"
    assert await GeneratedImage.objects.acount() == 0
    assert not local_storage.exists() or not any(local_storage.rglob("*.png"))
