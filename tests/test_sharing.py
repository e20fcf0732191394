"""Share links: created and revoked by the owner only, open without a login, show one
conversation, serve its images through the token, and stop at revocation or expiry."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations.models import GeneratedImage, Share
from tests.chats import add_image, chat

pytestmark = pytest.mark.django_db


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice(make_user: Any) -> Any:
    return make_user("alice")


def create_link(owner: Any, conversation: Any, days: str = "") -> dict[str, Any]:
    response = logged_in(owner).post(
        f"/c/{conversation.pk}/shares/", {"days": days}, headers={"accept": "application/json"}
    )
    assert response.status_code == 201, response.content
    return dict(response.json())


def path_of(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def test_a_link_opens_logged_out_and_shows_only_that_conversation(
    alice: Any, client: Client
) -> None:
    shared = chat(alice, "Harbour walk", "tell me about <b>harbours</b>", "They shelter **boats**.")
    image = add_image(shared)
    chat(alice, "Private diary", "my secret plans", "noted")
    link = create_link(alice, shared)

    page = client.get(path_of(link["url"]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Harbour walk" in html and "<strong>boats</strong>" in html
    assert "&lt;b&gt;harbours&lt;/b&gt;" in html  # the person's text as text
    assert "secret plans" not in html and "Private diary" not in html
    # The picture comes through the token, never by its owner-only URL or a storage URL.
    image_url = f"/s/{link['url'].rstrip('/').rsplit('/', 1)[1]}/images/{image.pk}/"
    assert f'src="{image_url}"' in html
    assert f"/images/{image.pk}/" not in html.replace(image_url, "")
    assert image.file.name not in html
    served = client.get(image_url)
    assert served.status_code == 200
    assert served["Content-Type"] == "image/png"
    assert b"".join(served.streaming_content) == image.file.open("rb").read()
    assert page["Referrer-Policy"] == "no-referrer"
    assert "no-cache" in page["Cache-Control"]


def test_after_revocation_the_page_and_its_images_are_not_found(alice: Any, client: Client) -> None:
    conversation = chat(alice, "Harbour walk", "hello", "hi")
    image = add_image(conversation)
    link = create_link(alice, conversation)
    token = path_of(link["url"]).split("/")[2]
    assert client.get(f"/s/{token}/").status_code == 200
    revoked = logged_in(alice).post(link["revoke_url"], headers={"accept": "application/json"})
    assert revoked.status_code == 200
    assert client.get(f"/s/{token}/").status_code == 404
    assert client.get(f"/s/{token}/images/{image.pk}/").status_code == 404
    listed = logged_in(alice).get(f"/c/{conversation.pk}/shares/").json()
    assert listed["shares"] == []


def test_an_expired_link_is_not_found(alice: Any, client: Client) -> None:
    conversation = chat(alice, "Harbour walk", "hello", "hi")
    image = add_image(conversation)
    link = create_link(alice, conversation, days="7")
    share = Share.objects.get()
    assert share.expires_at is not None
    assert timedelta(days=6) < share.expires_at - timezone.now() <= timedelta(days=7)
    token = path_of(link["url"]).split("/")[2]
    assert client.get(f"/s/{token}/").status_code == 200
    Share.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get(f"/s/{token}/").status_code == 404
    assert client.get(f"/s/{token}/images/{image.pk}/").status_code == 404


def test_another_user_cannot_share_or_revoke_my_conversation(alice: Any, make_user: Any) -> None:
    conversation = chat(alice, "Mine", "hello", "hi")
    mallory = logged_in(make_user("mallory"))
    attempt = mallory.post(f"/c/{conversation.pk}/shares/", headers={"accept": "application/json"})
    assert attempt.status_code == 404
    assert mallory.get(f"/c/{conversation.pk}/shares/").status_code == 404
    assert not Share.objects.exists()
    link = create_link(alice, conversation)
    assert mallory.post(link["revoke_url"]).status_code == 404
    assert Share.objects.get().is_live


def test_sharing_needs_a_login_and_a_known_lifetime(alice: Any, client: Client) -> None:
    conversation = chat(alice, "Mine", "hello", "hi")
    assert client.post(f"/c/{conversation.pk}/shares/").status_code == 302
    bad = logged_in(alice).post(f"/c/{conversation.pk}/shares/", {"days": "999"})
    assert bad.status_code == 400
    assert not Share.objects.exists()


def test_a_token_opens_only_its_own_conversations_images(alice: Any, client: Client) -> None:
    shared = chat(alice, "Shared", "hello", "hi")
    add_image(shared)
    other = add_image(chat(alice, "Not shared", "hello", "hi"), colour="red")
    token = path_of(create_link(alice, shared)["url"]).split("/")[2]
    assert client.get(f"/s/{token}/images/{other.pk}/").status_code == 404


def test_a_hidden_image_stays_hidden_on_the_shared_page(alice: Any, client: Client) -> None:
    conversation = chat(alice, "Shared", "hello", "hi")
    image = add_image(conversation)
    GeneratedImage.objects.filter(pk=image.pk).update(review_status=GeneratedImage.Review.HIDDEN)
    token = path_of(create_link(alice, conversation)["url"]).split("/")[2]
    assert f"/images/{image.pk}/" not in client.get(f"/s/{token}/").content.decode()
    assert client.get(f"/s/{token}/images/{image.pk}/").status_code == 404


def test_a_tampered_or_made_up_token_is_not_found(alice: Any, client: Client) -> None:
    conversation = chat(alice, "Shared", "hello", "hi")
    token = path_of(create_link(alice, conversation)["url"]).split("/")[2]
    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
    for wrong in [flipped, token[: Share.KEY_CHARS], token + "0", "x" * 54, "short"]:
        assert client.get(f"/s/{wrong}/").status_code == 404, wrong


def test_the_database_does_not_hold_the_link(alice: Any, settings: Any, client: Client) -> None:
    conversation = chat(alice, "Shared", "hello", "hi")
    token = path_of(create_link(alice, conversation)["url"]).split("/")[2]
    share = Share.objects.get()
    assert share.key != token and token.startswith(share.key)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM conversations_share")
        assert all(token not in str(value) for row in cursor.fetchall() for value in row)
    # The rest of the token is an HMAC under the server's secret: a new secret ends the
    # link, unless the old one is kept as a fallback.
    old = settings.SECRET_KEY
    settings.SECRET_KEY = "another-secret-" + "x" * 40
    assert client.get(f"/s/{token}/").status_code == 404
    settings.SECRET_KEY_FALLBACKS = [old]
    assert client.get(f"/s/{token}/").status_code == 200


def test_the_owner_can_copy_a_live_link_again(alice: Any) -> None:
    conversation = chat(alice, "Shared", "hello", "hi")
    link = create_link(alice, conversation)
    listed = logged_in(alice).get(f"/c/{conversation.pk}/shares/").json()
    assert [share["url"] for share in listed["shares"]] == [link["url"]]


@pytest.mark.parametrize("images", [1, 8])
def test_the_shared_page_costs_the_same_queries_however_long(
    alice: Any, client: Client, images: int
) -> None:
    conversation = chat(alice, "Long", *[f"line {n}" for n in range(10)])
    for number in range(images):
        add_image(conversation, prompt=f"picture {number}")
    token = path_of(create_link(alice, conversation)["url"]).split("/")[2]
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/s/{token}/")
    assert response.status_code == 200
    assert response.content.decode().count(f"/s/{token}/images/") == images
    # The share with its conversation, the messages, their tool calls, their images.
    assert len(queries) == 4, [q["sql"] for q in queries]


def test_the_admin_lists_the_shares(alice: Any, make_user: Any) -> None:
    conversation = chat(alice, "Harbour walk", "hello", "hi")
    create_link(alice, conversation)
    staff = logged_in(make_user("staff", is_staff=True, is_superuser=True))
    page = staff.get("/admin/conversations/share/")
    assert page.status_code == 200
    assert "Harbour walk" in page.content.decode() and "alice" in page.content.decode()
