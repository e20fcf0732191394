"""The chat page in a real browser, as a new user meets it: a streamed answer with an image."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from playwright.sync_api import Page, expect

from offline_model import ImageReply, OfflineModelServer
from tests.browser.conftest import wait_until_ready
from tests.browser.helpers import (
    CONVERSATION_URL,
    RECORD_STREAM,
    UUID,
    assert_streamed,
    query,
    scroll_to_end,
    streaming_requests,
    wait_until_image_loaded,
)
from tests.servers import AppServer

PROMPT = "draw a lighthouse at dusk"
PREAMBLE = "Sure, let me draw a lighthouse at dusk."
FOLLOW_UP = "Here is your picture of a lighthouse at dusk."


def test_a_new_user_watches_an_answer_stream_and_an_image_appear_and_finds_both_after_reload(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    app_server: AppServer,
    shoot: Callable[[Page, str], None],
) -> None:
    # A slow image call, so that the "Generating image…" state is there long enough to see.
    model.script_images(ImageReply(delay=1.0))
    log_in(user)
    expect(page.locator("#empty-state")).to_contain_text("What shall we make?")
    page.evaluate(RECORD_STREAM)

    page.locator("textarea#prompt").fill(PROMPT)
    page.locator("textarea#prompt").press("Enter")

    expect(page.locator("article.msg-user .body")).to_have_text(PROMPT)
    expect(page.locator("textarea#prompt")).to_have_value("")
    answer = page.locator("article.msg.msg-assistant")
    expect(answer).to_have_count(1)
    expect(answer).to_have_attribute("data-message-id", re.compile(r"^\d+$"))

    # The preamble streams in, then the tool card shows its running state...
    running = answer.locator("figure.tool-card.is-running")
    expect(running).to_be_visible()
    expect(running).to_contain_text("Generating image…")
    expect(running.locator("figcaption")).to_have_text("a lighthouse at dusk")
    expect(answer).to_have_attribute("data-status", "streaming")
    expect(answer.locator(".md.stream").first).to_have_text(PREAMBLE)
    expect(page.locator("#send")).to_be_disabled()
    expect(page.locator("#stop")).to_be_visible()

    # ...then the image itself, then the follow-up sentence, then the final render.
    image = answer.locator("figure.tool-card.is-complete img")
    assert wait_until_image_loaded(page, image) == 512
    expect(image).to_have_attribute("src", re.compile(rf"^/images/{UUID}/$"))
    expect(answer).to_contain_text(FOLLOW_UP)
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".md.stream")).to_have_count(0)  # replaced by the server's HTML
    expect(answer).to_contain_text(PREAMBLE)
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_visible()

    # Both the preamble (before the tool card) and the follow-up (after the image) must
    # have grown in several steps over time while the answer was "streaming".
    samples = page.evaluate("window.__stream")
    assert any(s["placeholder"] for s in samples), "no 'Generating image…' state was seen"
    card_at = next(i for i, s in enumerate(samples) if s["placeholder"])
    image_at = max(i for i, s in enumerate(samples) if s["placeholder"]) + 1
    assert_streamed(samples[:card_at], "the preamble")
    assert_streamed(samples[image_at:], "the follow-up")

    # The new conversation got its own address.
    expect(page).to_have_url(CONVERSATION_URL)
    match = CONVERSATION_URL.search(page.url)
    assert match is not None
    conversation_id = uuid.UUID(match.group(1))

    # What the model was sent: the user's words and the tool, then a small JSON result
    # for the image (never its bytes).
    chats = streaming_requests(model)
    assert len(chats) == 2
    first, second = chats
    assert first["stream"] is True
    assert first["messages"][-1] == {"role": "user", "content": PROMPT}
    # Both image tools: nothing drawn yet, but edits are offered whenever the model can edit.
    assert [tool["function"]["name"] for tool in first["tools"]] == ["generate_image", "edit_image"]
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool"
    assert len(tool_message["content"]) < 1000
    assert "a lighthouse at dusk" in tool_message["content"]
    assert "base64" not in tool_message["content"] and "data:" not in tool_message["content"]
    images = model.image_requests()
    assert len(images) == 1
    assert (images[0].body or {})["prompt"] == "a lighthouse at dusk"
    assert (images[0].body or {})["size"] == "512x512"

    # What the server stored (read straight from its SQLite file).
    rows = query(
        app_server,
        "SELECT role, status, text FROM conversations_message"
        " WHERE conversation_id = ? ORDER BY id",
        conversation_id.hex,
    )
    stored = query(
        app_server,
        "SELECT width, height, file FROM conversations_generatedimage WHERE conversation_id = ?",
        conversation_id.hex,
    )
    assert [(role, status) for role, status, _ in rows] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert rows[1][2].startswith(PREAMBLE) and FOLLOW_UP in rows[1][2]
    assert len(stored) == 1 and stored[0][:2] == (512, 512)
    assert (app_server.media_root / stored[0][2]).is_file()

    # A reload shows the whole conversation again, from the server.
    page.reload()
    wait_until_ready(page)
    expect(page).to_have_url(CONVERSATION_URL)
    expect(page.locator("#chat-title")).not_to_have_text("New chat")
    expect(page.locator("#conversation-list a[aria-current='page']")).to_have_count(1)
    expect(page.locator("article.msg-user .body")).to_have_text(PROMPT)
    answer = page.locator("article.msg.msg-assistant")
    expect(answer).to_have_count(1)
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer).to_contain_text(PREAMBLE)
    expect(answer).to_contain_text(FOLLOW_UP)
    image = answer.locator("figure.tool-card.is-complete img")
    assert wait_until_image_loaded(page, image) == 512
    expect(answer.locator("figure.tool-card figcaption")).to_have_text("a lighthouse at dusk")
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_visible()

    scroll_to_end(page)
    shoot(page, "chat-image")


def test_a_long_chat_opens_at_its_end_and_shows_earlier_messages_on_demand(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    app_server: AppServer,
    shoot: Callable[[Page, str], None],
) -> None:
    code = f"""
from django.contrib.auth import get_user_model
from conversations.models import Conversation, Message
user = get_user_model().objects.get(username={user!r})
c = Conversation.objects.create(user=user, title="A long chat")
parent = None
for n in range(150):
    parent = Message.objects.create(
        conversation=c, role="user" if n % 2 == 0 else "assistant", parent=parent,
        text=f"Question {{n}}" if n % 2 == 0 else f"Answer **{{n}}**")
print(c.id)
"""
    (conversation,) = re.findall(UUID, app_server.manage("shell", "-c", code))
    log_in(user)
    page.goto(f"{app_server.url}/c/{conversation}/")
    wait_until_ready(page)
    articles = page.locator("#thread > article")
    expect(articles).to_have_count(60)
    expect(articles.last).to_contain_text("Answer 149")
    expect(articles.first).to_have_text(re.compile("Question 90"))

    earlier = page.get_by_role("button", name="Show earlier messages")
    earlier.click()
    expect(articles).to_have_count(120)
    # The reader's place is kept: the message that was first is still in view.
    expect(page.locator("#thread > article", has_text="Question 90").first).to_be_in_viewport()
    page.locator("#messages").evaluate("(s) => { s.scrollTop = 0; }")
    expect(earlier).to_be_in_viewport()
    shoot(page, "chat-earlier-messages")
    earlier.click()
    expect(articles).to_have_count(150)
    expect(earlier).to_be_hidden()
    texts = articles.all_inner_texts()
    assert [t.split()[-1] for t in texts] == [str(n) for n in range(150)]
