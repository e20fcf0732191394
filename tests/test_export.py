"""Export: a conversation as Markdown or as a zip with its images, for its owner only."""

from __future__ import annotations

import asyncio
import io
import zipfile
from typing import Any

import pytest
from django.test import AsyncClient, Client

from tests.chats import add_image, chat

pytestmark = pytest.mark.django_db


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_markdown_export_has_every_message_and_links_the_images(make_user: Any) -> None:
    alice = make_user("alice")
    conversation = chat(alice, "Harbour walk", "tell me about harbours", "They shelter **boats**.")
    image = add_image(conversation)
    response = logged_in(alice).get(f"/c/{conversation.pk}/export.md")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/markdown")
    assert 'filename="chatimg-harbour-walk.md"' in response["Content-Disposition"]
    text = response.content.decode()
    assert text.startswith("# Harbour walk\n")
    assert "tell me about harbours" in text and "They shelter **boats**." in text
    assert f"![a lighthouse, revised](http://testserver/images/{image.pk}/)" in text
    assert text.index("Here it is.") < text.index("![a lighthouse") < text.index("Done.")


def test_zip_export_holds_the_markdown_and_the_image_bytes(make_user: Any) -> None:
    alice = make_user("alice")
    conversation = chat(alice, "Harbour walk", "hello", "hi")
    images = [
        add_image(conversation, f"picture {n}", colour)
        for n, colour in enumerate(["red", "green", "blue"])
    ]
    response = logged_in(alice).get(f"/c/{conversation.pk}/export.zip")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response.streaming
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.testzip() is None
    names = sorted(archive.namelist())
    assert names == sorted(["conversation.md"] + [f"images/{i.pk}.png" for i in images])
    markdown = archive.read("conversation.md").decode()
    for image in images:
        assert f"](images/{image.pk}.png)" in markdown
        assert archive.read(f"images/{image.pk}.png") == image.file.open("rb").read()


@pytest.mark.django_db(transaction=True)
def test_under_asgi_the_zip_streams_in_chunks(make_user: Any) -> None:
    alice = make_user("alice")
    conversation = chat(alice, "Harbour walk", "hello", "hi")
    for number in range(3):
        add_image(conversation, f"picture {number}")

    async def fetch() -> Any:
        client = AsyncClient()
        await client.aforce_login(alice)
        response = await client.get(f"/c/{conversation.pk}/export.zip")
        return response, [chunk async for chunk in response.streaming_content]

    response, chunks = asyncio.run(fetch())
    assert response.status_code == 200
    assert len(chunks) > 3  # the markdown, each image, the directory: not one body
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert len(archive.namelist()) == 4


@pytest.mark.parametrize("suffix", ["export.md", "export.zip"])
def test_only_the_owner_can_export(make_user: Any, client: Client, suffix: str) -> None:
    conversation = chat(make_user("alice"), "Mine", "secret", "ok")
    assert logged_in(make_user("mallory")).get(f"/c/{conversation.pk}/{suffix}").status_code == 404
    assert client.get(f"/c/{conversation.pk}/{suffix}").status_code == 302
