"""Server-rendered pages: auth, the chat page, and the admin's review screens."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from conversations.models import Conversation, GeneratedImage, Message, ToolInvocation

pytestmark = pytest.mark.django_db


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def conversation_with_image(user: Any) -> tuple[Conversation, GeneratedImage]:
    conversation = Conversation.objects.create(user=user, title="Lighthouses")
    question = conversation.messages.create(role="user", text="draw a lighthouse <b>now</b>")
    answer = conversation.messages.create(
        role="assistant",
        reply_to=question,
        text="Sure, drawing it.Here it is, with **bold** words.",
    )
    invocation = ToolInvocation.objects.create(
        message=answer,
        call_id="call_1",
        name="generate_image",
        arguments={"prompt": "a lighthouse"},
        status="complete",
        text_offset=len("Sure, drawing it."),
    )
    image = GeneratedImage.objects.create(
        user=user,
        conversation=conversation,
        tool_invocation=invocation,
        file="images/ab/abc.png",
        sha256="0" * 64,
        bytes=10,
        width=256,
        height=256,
        model="gpt-image-test",
        size="256x256",
        prompt="a lighthouse",
        revised_prompt="A lighthouse at dusk, oil painting",
    )
    return conversation, image


@pytest.mark.parametrize("url", ["/", "/c/00000000-0000-0000-0000-000000000000/"])
def test_every_page_needs_a_login(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_a_new_user_can_sign_up_and_lands_on_the_chat(client: Client) -> None:
    response = client.post(
        "/signup/",
        {
            "username": "newbie",
            "password1": "a-long-pass-phrase",
            "password2": "a-long-pass-phrase",
        },
        follow=True,
    )
    assert response.redirect_chain[-1][0] == reverse("chat")
    assert response.context["user"].username == "newbie"
    assert b"New chat" in response.content


def test_login_and_logout(client: Client, make_user: Any) -> None:
    make_user("alice")
    response = client.post("/login/", {"username": "alice", "password": "pw-alice"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    client.post("/logout/")
    assert client.get("/").status_code == 302


def test_the_chat_page_shows_the_conversation_with_its_image_in_place(make_user: Any) -> None:
    alice = make_user("alice")
    conversation, image = conversation_with_image(alice)
    response = logged_in(alice).get(conversation.get_absolute_url())
    html = response.content.decode()
    assert response.status_code == 200
    # Text, then the image, then the follow-up: in the order they were produced.
    first, picture, follow_up = (
        html.index("Sure, drawing it."),
        html.index(f'src="/images/{image.id}/"'),
        html.index("<strong>bold</strong>"),
    )
    assert first < picture < follow_up
    assert "A lighthouse at dusk, oil painting" in html  # the revised prompt as caption
    assert "draw a lighthouse &lt;b&gt;now&lt;/b&gt;" in html  # user text is text
    assert "offline model" not in html or "OPENAI_API_KEY" in html


def test_the_chat_page_lists_only_my_conversations(make_user: Any) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    Conversation.objects.create(user=alice, title="alice's chat")
    theirs = Conversation.objects.create(user=bob, title="bob's secret")
    client = logged_in(alice)
    page = client.get("/").content.decode()
    # (Not "bob" anywhere: the search box's role="combobox" has it.)
    assert "alice&#x27;s chat" in page and "secret" not in page
    assert client.get(theirs.get_absolute_url()).status_code == 404
    assert client.post(f"/c/{theirs.pk}/delete/").status_code == 404
    assert Conversation.objects.filter(pk=theirs.pk).exists()


def test_the_page_says_when_the_offline_model_is_answering(make_user: Any, settings: Any) -> None:
    settings.OFFLINE_MODEL = True
    page = logged_in(make_user()).get("/").content.decode()
    assert "built-in offline model" in page and "OPENAI_API_KEY" in page
    settings.OFFLINE_MODEL = False
    assert "built-in offline model" not in logged_in(make_user("bob")).get("/").content.decode()


def test_model_markdown_is_sanitised(make_user: Any) -> None:
    alice = make_user("alice")
    conversation = Conversation.objects.create(user=alice)
    conversation.messages.create(
        role="assistant",
        text="[click](javascript:alert(1)) <script>alert(2)</script> ![x](https://evil/x.png) "
        "[ok](https://example.com)\n\n```\ncode <b>\n```",
    )
    html = logged_in(alice).get(conversation.get_absolute_url()).content.decode()
    # The thread only: the page's <template>s and lightbox hold an empty <img> of their own.
    body = html[html.index('id="messages"') : html.index('class="composer-area"')]
    # The Markdown source rides along for Copy, escaped, in an attribute (text, never markup).
    source = re.search(r' data-source="([^"]*)"', body)
    assert source is not None and "<" not in source.group(1) and "&lt;script&gt;" in source.group(1)
    body = body.replace(source.group(0), "")
    # The javascript: link stays inert text, the script is escaped, the picture is dropped.
    assert 'href="javascript:' not in body and "<script>alert" not in body
    assert "<img" not in body and "evil/x.png" not in body
    assert 'href="https://example.com"' in body and 'rel="noopener noreferrer nofollow"' in body
    assert "code &lt;b&gt;" in body


def test_staff_review_generated_images_in_the_admin(make_user: Any) -> None:
    alice = make_user("alice")
    staff = make_user("mod", is_staff=True, is_superuser=True)
    conversation, image = conversation_with_image(alice)
    client = logged_in(staff)

    listing = client.get("/admin/conversations/generatedimage/?q=lighthouse")
    assert listing.status_code == 200
    page = listing.content.decode()
    # A stored thumbnail made once (conversations/thumbnails.py), not the full PNG.
    assert f'<img src="/images/{image.id}/thumb/"' in page
    assert "a lighthouse" in page and "alice" in page and "gpt-image-test" in page
    assert (
        client.get("/admin/conversations/generatedimage/?q=volcano")
        .content.decode()
        .count(f"/images/{image.id}/")
        == 0
    )

    detail = client.get(f"/admin/conversations/generatedimage/{image.id}/change/")
    assert (
        detail.status_code == 200
        and "A lighthouse at dusk, oil painting" in detail.content.decode()
    )
    convo = client.get(f"/admin/conversations/conversation/{conversation.pk}/change/")
    assert convo.status_code == 200 and "Sure, drawing it." in convo.content.decode()
    message = Message.objects.filter(role="assistant").get()
    detail = client.get(f"/admin/conversations/message/{message.pk}/change/")
    assert detail.status_code == 200 and "generate_image" in detail.content.decode()


def test_non_staff_cannot_open_the_admin(make_user: Any) -> None:
    response = logged_in(make_user()).get("/admin/conversations/generatedimage/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_favicon_that_admin_pages_ask_for_is_served_to_anyone(client: Client) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/vnd.microsoft.icon"
    assert response.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert "max-age=86400" in response["Cache-Control"]
