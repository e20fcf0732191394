"""The gallery of my images, stored thumbnails, and the admin's view of pictures."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.db.models import F
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from PIL import Image

from conversations import attachments, image_views, thumbnails
from conversations.models import Conversation, GeneratedImage, PendingDeletion, ToolInvocation

pytestmark = pytest.mark.django_db


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def png(width: int = 600, height: int = 400) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 160)).save(out, format="PNG")
    return out.getvalue()


def images_in(
    user: Any, count: int, title: str = "pictures", *, stored: bool = False
) -> tuple[Conversation, list[GeneratedImage]]:
    """`count` images in one new conversation, the first the newest."""
    conversation = Conversation.objects.create(user=user, title=title)
    answer = conversation.messages.create(role="assistant", text="here")
    made = []
    for n in range(count):
        invocation = ToolInvocation.objects.create(
            message=answer, call_id=f"c{n}", name="generate_image", status="complete"
        )
        name = f"images/t/{title}-{n}.png"
        if stored:
            name = default_storage.save(name, ContentFile(png()))
        made.append(
            GeneratedImage.objects.create(
                user=user,
                conversation=conversation,
                tool_invocation=invocation,
                file=name,
                sha256=f"{title}{n}",
                bytes=1,
                width=600,
                height=400,
                model="m",
                prompt=f"{title} prompt {n}",
                created_at=timezone.now() - timedelta(minutes=n),
            )
        )
    return conversation, made


def shown(page: str) -> list[str]:
    """The image ids a gallery page links to, in order."""
    return re.findall(r'data-image-id="([0-9a-f-]{36})"', page)


# --- the gallery -------------------------------------------------------------------------


def test_the_gallery_shows_my_images_newest_first_each_opening_its_conversation(
    make_user: Any,
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    older, old_images = images_in(alice, 2, "boats")
    newer, new_images = images_in(alice, 1, "foxes")
    GeneratedImage.objects.filter(conversation=older).update(
        created_at=F("created_at") - timedelta(days=1)
    )
    images_in(bob, 3, "bobs")

    response = logged_in(alice).get("/images/")

    assert response.status_code == 200
    page = response.content.decode()
    expected = [new_images[0], old_images[0], old_images[1]]
    assert shown(page) == [str(image.id) for image in expected]
    assert "bobs" not in page
    assert f'href="/c/{newer.id}/#image-{new_images[0].id}"' in page
    assert f'src="/images/{new_images[0].id}/thumb/"' in page


def test_the_gallery_pages_and_filters_by_conversation(make_user: Any) -> None:
    alice = make_user("alice")
    boats, boat_images = images_in(alice, image_views.GALLERY_PAGE_SIZE + 1, "boats")
    foxes, fox_images = images_in(alice, 2, "foxes")
    GeneratedImage.objects.filter(conversation=foxes).update(
        created_at=F("created_at") - timedelta(days=1)
    )
    client = logged_in(alice)

    first = shown(client.get("/images/").content.decode())
    second = shown(client.get("/images/?page=2").content.decode())
    assert len(first) == image_views.GALLERY_PAGE_SIZE
    assert first + second == [str(i.id) for i in [*boat_images, *fox_images]]

    only_foxes = client.get(f"/images/?conversation={foxes.id}").content.decode()
    assert shown(only_foxes) == [str(i.id) for i in fox_images]
    assert f'<option value="{foxes.id}" selected>' in only_foxes
    # Paging keeps the filter.
    paged = client.get(f"/images/?conversation={boats.id}").content.decode()
    assert f"?conversation={boats.id}&amp;page=2" in paged


def test_another_users_gallery_filter_is_not_found(make_user: Any) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    theirs, _ = images_in(bob, 1, "secret")
    response = logged_in(alice).get(f"/images/?conversation={theirs.id}")
    assert response.status_code == 404
    assert "secret" not in response.content.decode()
    assert logged_in(alice).get("/images/?conversation=nope").status_code == 404
    assert Client().get("/images/").status_code == 302  # to the login page


def test_hidden_images_are_not_in_the_gallery(make_user: Any) -> None:
    alice = make_user("alice")
    _, made = images_in(alice, 2)
    made[0].review_status = GeneratedImage.Review.HIDDEN
    made[0].save()
    assert shown(logged_in(alice).get("/images/").content.decode()) == [str(made[1].id)]


def test_the_gallery_costs_the_same_queries_for_2_and_24_images(make_user: Any) -> None:
    counts = []
    for total in (2, image_views.GALLERY_PAGE_SIZE):
        user = make_user(f"user{total}")
        for n in range(total // 2):
            images_in(user, 2, f"c{n}")
        client = logged_in(user)
        with CaptureQueriesContext(connection) as queries:
            response = client.get("/images/")
        assert len(shown(response.content.decode())) == total
        counts.append(len(queries))
    assert counts[0] == counts[1], counts


# --- thumbnails --------------------------------------------------------------------------


def test_a_thumbnail_is_made_once_stored_and_deleted_with_its_image(
    make_user: Any, local_storage: Path, monkeypatch: Any, django_capture_on_commit_callbacks: Any
) -> None:
    alice = make_user("alice")
    _, (image,) = images_in(alice, 1, stored=True)
    made = []
    real = thumbnails.render
    monkeypatch.setattr(thumbnails, "render", lambda data: made.append(1) or real(data))
    client = logged_in(alice)

    first = client.get(f"/images/{image.id}/thumb/")
    second = client.get(f"/images/{image.id}/thumb/")

    assert first.status_code == second.status_code == 200
    assert first["Content-Type"] == "image/webp"
    body = b"".join(first.streaming_content)
    with Image.open(io.BytesIO(body)) as small:
        assert small.format == "WEBP" and max(small.size) == thumbnails.SIZE
    assert len(body) < len(default_storage.open(image.file.name).read())
    assert made == [1]  # the second view served the stored copy
    image.refresh_from_db()
    assert image.thumbnail.startswith("thumbs/") and image.id.hex in image.thumbnail
    stored = local_storage / image.thumbnail
    assert stored.exists()

    with django_capture_on_commit_callbacks(execute=True):
        GeneratedImage.objects.get(pk=image.pk).conversation.delete()
    assert not stored.exists() and not (local_storage / image.file.name).exists()
    assert not PendingDeletion.objects.exists()


def test_someone_elses_thumbnail_is_not_found(make_user: Any) -> None:
    _, (image,) = images_in(make_user("alice"), 1, stored=True)
    assert logged_in(make_user("bob")).get(f"/images/{image.id}/thumb/").status_code == 404


# --- the admin ---------------------------------------------------------------------------


def test_the_admin_shows_thumbnails_working_file_links_and_attachments(make_user: Any) -> None:
    alice = make_user("alice")
    staff = make_user("mod", is_staff=True, is_superuser=True)
    conversation, (image,) = images_in(alice, 1, stored=True)
    question = conversation.messages.create(role="user", text="look")
    upload = attachments.store(alice, io.BytesIO(png(50, 40)))
    upload.message, upload.conversation = question, conversation
    upload.save()
    client = logged_in(staff)

    listing = client.get("/admin/conversations/generatedimage/").content.decode()
    assert f'<img src="/images/{image.id}/thumb/"' in listing
    assert client.get(f"/images/{image.id}/thumb/").status_code == 200

    detail = client.get(f"/admin/conversations/generatedimage/{image.id}/change/").content.decode()
    # The "File" link goes through the app's image URL (a /media/ URL is never served).
    assert f'href="/images/{image.id}/"' in detail
    assert 'href="/media/' not in detail
    assert client.get(f"/images/{image.id}/").status_code == 200

    convo = client.get(f"/admin/conversations/conversation/{conversation.pk}/change/")
    page = convo.content.decode()
    assert f"/attachments/{upload.id}/thumb/" in page
    assert "conversations/admin_transcript.js" in page  # the Enlarge buttons' script

    uploads = client.get("/admin/conversations/attachment/").content.decode()
    assert f"/attachments/{upload.id}/thumb/" in uploads
    message = client.get(f"/admin/conversations/message/{question.pk}/change/").content.decode()
    assert f"/attachments/{upload.id}/thumb/" in message


def test_the_admin_offers_no_add_for_conversations(make_user: Any) -> None:
    client = logged_in(make_user("mod", is_staff=True, is_superuser=True))
    listing = client.get("/admin/conversations/conversation/").content.decode()
    assert "/admin/conversations/conversation/add/" not in listing
    assert client.get("/admin/conversations/conversation/add/").status_code == 403
