"""Server-rendered pages: auth, the chat page, and the admin's review screens."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from conversations import rendering
from conversations.models import (
    Conversation,
    GeneratedImage,
    ImageQuota,
    Message,
    ToolInvocation,
)
from conversations.views import MESSAGES_PER_PAGE
from tests.chats import attachment_row

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


def long_chat(user: Any, messages: int, images: int, *, edits: bool = True) -> Conversation:
    """A chat of `messages` messages (question, Markdown answer, ...), `images` of whose
    answers made two images in one call, each call's first image edited from the
    call before (its parent) when `edits`."""
    conversation = Conversation.objects.create(user=user, title="A long chat")
    parent: Message | None = None
    for n in range(messages):
        # One path (each message's parent the one before): a chat without branches.
        parent = Message.objects.create(
            conversation=conversation,
            role="user" if n % 2 == 0 else "assistant",
            text=f"Question {n}?" if n % 2 == 0 else f"Answer **{n}**, with `code`.",
            parent=parent,
        )
    answers = list(conversation.messages.filter(role="assistant").order_by("id"))
    step = max(1, len(answers) // max(1, images))
    previous: GeneratedImage | None = None
    for index, answer in enumerate(answers[::-1][::step][:images]):
        invocation = ToolInvocation.objects.create(
            message=answer,
            call_id=f"call_{index}",
            name="generate_image",
            arguments={"prompt": f"picture {index}", "n": 2},
            status="complete",
            text_offset=len(answer.text),
        )
        made = [
            GeneratedImage.objects.create(
                user=user,
                conversation=conversation,
                tool_invocation=invocation,
                index=n,
                file=f"images/{index:02x}/{index}-{n}.png",
                sha256=f"{index * 2 + n:064x}",
                bytes=10,
                width=64,
                height=64,
                model="test",
                prompt=f"picture {index}",
            )
            for n in range(2)
        ]
        if previous is not None and edits:
            made[0].parents.add(previous)
        previous = made[0]
    return conversation


def queries_of(client: Client, url: str) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries), response.content.decode()


def test_a_long_chat_opens_with_its_latest_messages_in_a_fixed_number_of_queries(
    make_user: Any, settings: Any
) -> None:
    alice = make_user("alice")
    long = long_chat(alice, 500, 100)
    short = long_chat(alice, 4, 2)
    client = logged_in(alice)
    client.get(long.get_absolute_url())  # the first view stores the rendered HTML
    client.get(short.get_absolute_url())
    count, html = queries_of(client, long.get_absolute_url())
    # Session (none when it is read from the cache, i.e. with Redis), user, sidebar
    # with today's image count, messages with their conversation, tool invocations,
    # their images, the images' parents (this chat has edits).
    session_reads = 0 if "cached_db" in settings.SESSION_ENGINE else 1
    assert count == 6 + session_reads
    assert queries_of(client, short.get_absolute_url())[0] == count
    # The latest messages, the last answer included; the first ones on demand.
    assert len(re.findall(r'<article [^>]*data-message-id="\d+"', html)) == MESSAGES_PER_PAGE
    assert "Answer <strong>499</strong>" in html and "Question 0?" not in html
    assert 'id="load-earlier"' in html and "/images/" in html
    assert "Edited from" in html or "edited from" in html


def test_what_a_chat_does_not_have_costs_its_page_no_query(make_user: Any, settings: Any) -> None:
    alice = make_user("alice")
    chat = long_chat(alice, 80, 10, edits=False)
    client = logged_in(alice)
    client.get(chat.get_absolute_url())  # the first view stores the rendered HTML
    session_reads = 0 if "cached_db" in settings.SESSION_ENGINE else 1
    ImageQuota.objects.reserve(alice, 3)
    # No versions, no edits, no attachments on the page: user, sidebar (with
    # today's image count), messages, invocations, images.
    count, html = queries_of(client, chat.get_absolute_url())
    assert count == 5 + session_reads
    assert f"{settings.IMAGES_PER_DAY - 3} images left today" in html
    assert "/images/" in html and "Edited from" not in html
    assert not re.search(r'class="versions-label">\d', html)  # no "2 / 3" anywhere
    assert 'href="/attachments/' not in html

    # Each of them, where the page shows it, costs its own query and is shown.
    question = chat.messages.filter(role="user", active=True).order_by("-id").first()
    assert question is not None
    picture = attachment_row(question)
    count, html = queries_of(client, chat.get_absolute_url())
    assert count == 6 + session_reads and f'href="/attachments/{picture.id}/"' in html

    # The two newest answers' pictures (the fixture draws from the end first).
    first, second = GeneratedImage.objects.filter(conversation=chat, index=0).order_by(
        "created_at"
    )[:2]
    first.parents.add(second)
    count, html = queries_of(client, chat.get_absolute_url())
    assert count == 7 + session_reads and "Edited from" in html

    chat.begin_edit(question.pk, "The same question, asked again", "edit-1")
    chat.messages.get(active=True, role="assistant", status="streaming").finish("complete", "A")
    chat.switch_branch(question.pk)  # back to the branch with the images
    count, html = queries_of(client, chat.get_absolute_url())
    assert count == 8 + session_reads
    assert re.search(r'class="versions-label">1 / 2<', html) and "/images/" in html


def test_the_page_shows_the_images_left_today_with_or_without_chats(
    make_user: Any, settings: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    alice, bob = make_user("alice"), make_user("bob")
    client = logged_in(alice)
    limit = settings.IMAGES_PER_DAY
    assert f"{limit} images left today" in client.get("/").content.decode()  # no chat yet

    ImageQuota.objects.reserve(alice, 2)
    assert f"{limit - 2} images left today" in client.get("/").content.decode()
    chat = Conversation.objects.create(user=alice, title="Lighthouses")
    # Yesterday's count and someone else's are not hers.
    ImageQuota.objects.create(user=alice, day=timezone.now().date() - timedelta(days=1), used=9)
    ImageQuota.objects.reserve(bob, 5)
    for url in ("/", chat.get_absolute_url()):
        assert f"{limit - 2} images left today" in client.get(url).content.decode()

    staff = make_user("root", is_staff=True)
    ImageQuota.objects.reserve(staff, 1)
    Conversation.objects.create(user=staff, title="Mine")
    assert '<span id="images-left" hidden>' in logged_in(staff).get("/").content.decode()


def test_earlier_messages_load_page_by_page_each_once_and_in_order(make_user: Any) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    chat = long_chat(alice, 130, 10)
    client = logged_in(alice)
    page = client.get(chat.get_absolute_url()).content.decode()
    url = re.search(r'id="load-earlier" data-action="earlier" data-url="([^"]+)"', page)
    assert url is not None
    shown = re.findall(r"(?:Question |Answer <strong>)(\d+)", page)
    next_url: str | None = url.group(1).replace("&amp;", "&")
    while next_url:
        earlier = client.get(next_url, headers={"accept": "application/json"}).json()
        shown = re.findall(r"(?:Question |Answer <strong>)(\d+)", earlier["html"]) + shown
        next_url = earlier["next"]
    assert shown == [str(n) for n in range(130)]
    # Someone else's chat is not found, the same as a missing one.
    theirs = logged_in(bob).get(url.group(1).replace("&amp;", "&"))
    assert theirs.status_code == 404
    assert client.get(f"/c/{chat.pk}/messages/?before=x").status_code == 400


def test_the_page_and_earlier_messages_show_the_active_branch_only(make_user: Any) -> None:
    alice = make_user("alice")
    chat = long_chat(alice, 70, 0)
    first = chat.messages.order_by("id").first()
    assert first is not None
    # An edit of the first question: the new branch is a single exchange.
    chat.begin_edit(first.pk, "Question 0, edited", "edit-1")
    answer = chat.messages.filter(active=True, role="assistant").get()
    answer.finish("complete", "The edited answer")
    client = logged_in(alice)
    page = client.get(chat.get_absolute_url()).content.decode()
    assert "Question 0, edited" in page and "Question 2?" not in page
    assert 'id="load-earlier"' not in page
    assert "2 / 2" in page  # the question's versions
    # Back on the old branch, earlier messages come from that branch.
    chat.switch_branch(first.pk)
    page = client.get(chat.get_absolute_url()).content.decode()
    assert "Question 0, edited" not in page and "Answer <strong>69</strong>" in page
    url = re.search(r'data-url="([^"]+/messages/[^"]+)"', page)
    assert url is not None
    earlier = client.get(url.group(1).replace("&amp;", "&")).json()
    assert "Question 0?" in earlier["html"] and "1 / 2" in earlier["html"]
    assert "edited" not in earlier["html"]


def test_a_messages_html_is_rendered_once_and_again_when_the_renderer_changes(
    make_user: Any, monkeypatch: Any
) -> None:
    alice = make_user("alice")
    conversation, _ = conversation_with_image(alice)
    client = logged_in(alice)
    client.get(conversation.get_absolute_url())
    answer = conversation.messages.get(role="assistant")
    assert answer.html_version == rendering.RENDER_VERSION
    assert answer.html == [
        "<p>Sure, drawing it.</p>\n",
        "<p>Here it is, with <strong>bold</strong> words.</p>\n",
    ]
    # The stored HTML is what the page shows while its version is current...
    Message.objects.filter(pk=answer.pk).update(html=["<p>stored one</p>", "<p>stored two</p>"])
    page = client.get(conversation.get_absolute_url()).content.decode()
    assert "stored one" in page and "<strong>bold</strong>" not in page
    # ...and a new renderer version renders (and stores) it again at the next view.
    monkeypatch.setattr(rendering, "RENDER_VERSION", rendering.RENDER_VERSION + 1)
    page = client.get(conversation.get_absolute_url()).content.decode()
    assert "stored one" not in page and "<strong>bold</strong>" in page
    answer.refresh_from_db()
    assert answer.html_version == rendering.RENDER_VERSION
    assert "draw a lighthouse &lt;b&gt;now&lt;/b&gt;" in page  # a user's text stays text


def test_a_finished_exchange_is_shown_without_rendering_or_writing_at_its_first_view(
    make_user: Any,
) -> None:
    alice = make_user("alice")
    conversation, _, answer, _, _ = Conversation.objects.start_turn(alice, None, "k1", "hi *there*")
    answer.finish("complete", "Hi **you**", invocations=[])  # as a turn ends
    client = logged_in(alice)
    with CaptureQueriesContext(connection) as captured:
        page = client.get(conversation.get_absolute_url()).content.decode()
    assert "<strong>you</strong>" in page and "hi *there*" in page
    assert not [q for q in captured.captured_queries if q["sql"].startswith("UPDATE")]
