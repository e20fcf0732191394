"""The chat page in a real browser, as a new user meets it."""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, expect

from conversations.offline_model import ImageReply, OfflineModelServer
from tests.browser.conftest import PASSWORD, AppServer, PageErrors

PROMPT = "draw a lighthouse at dusk"
PREAMBLE = "Sure, let me draw a lighthouse at dusk."
FOLLOW_UP = "Here is your picture of a lighthouse at dusk."
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CONVERSATION_URL = re.compile(rf"/c/({UUID})/$")

# Records, on every DOM change, the streamed text length and status of the latest
# assistant answer. No polling and no sleeps: each websocket frame the page handles is
# its own task, so text that really streams shows up as several growing samples.
RECORD_STREAM = """() => {
  window.__stream = [];
  const messages = document.getElementById("messages");
  new MutationObserver(() => {
    const all = messages.querySelectorAll("article.msg-assistant");
    const article = all[all.length - 1];
    if (!article) return;
    const streamed = [...article.querySelectorAll(".md.stream")]
      .map((node) => node.textContent).join("");
    window.__stream.push({
      t: performance.now(),
      status: article.dataset.status || "",
      length: streamed.length,
      placeholder: Boolean(article.querySelector("figure.tool-card.is-running")),
    });
  }).observe(messages, {subtree: true, childList: true, characterData: true, attributes: true});
}"""

IMAGE_LOADED = """(img) => img.complete && img.naturalWidth > 0"""


def wait_until_image_loaded(page: Page, image: Locator) -> int:
    """Wait for the <img> to be decoded; returns its natural width (0 if it never loads)."""
    expect(image).to_be_visible()
    image.scroll_into_view_if_needed()
    page.wait_for_function(IMAGE_LOADED, arg=image.element_handle())
    return int(image.evaluate("(img) => img.naturalWidth"))


def assert_streamed(samples: list[dict[str, Any]], what: str) -> None:
    """The streamed text grew past where it started, in 2+ steps spread over >= 100 ms."""
    streaming = [s for s in samples if s["status"] == "streaming"]
    assert streaming, f"{what}: the answer was never seen streaming"
    start = streaming[0]["length"]
    grown = [s for s in streaming if s["length"] > start]
    steps = {s["length"] for s in grown}
    assert len(steps) >= 2, f"{what} did not stream, it arrived at once: {streaming}"
    assert grown[-1]["t"] - grown[0]["t"] >= 100, f"{what} arrived in one burst: {streaming}"


def test_a_new_user_watches_an_answer_stream_and_an_image_appear_and_finds_both_after_reload(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    app_server: AppServer,
    page_errors: PageErrors,
    output_dir: Path,
) -> None:
    # A slow image call, so that the "Generating image…" state is there long enough to see.
    model.script_images(ImageReply(delay=1.0))
    log_in(user)
    expect(page.locator("#empty-state")).to_contain_text("What shall we make?")
    page.evaluate(RECORD_STREAM)

    page.locator("textarea#prompt").fill(PROMPT)
    page.locator("textarea#prompt").press("Enter")

    expect(page.locator("article.msg-user")).to_have_text(PROMPT)
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

    # ...then the image itself, then the follow-up sentence, then the final render.
    image = answer.locator("figure.tool-card.is-complete img")
    assert wait_until_image_loaded(page, image) == 256
    expect(image).to_have_attribute("src", re.compile(rf"^/images/{UUID}/$"))
    expect(answer).to_contain_text(FOLLOW_UP)
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".md.stream")).to_have_count(0)  # replaced by the server's HTML
    expect(answer).to_contain_text(PREAMBLE)
    expect(page.locator("#send")).to_be_enabled()

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
    chats = model.chat_requests()
    assert len(chats) == 2
    first, second = (request.body or {} for request in chats)
    assert first["stream"] is True
    assert first["messages"][-1] == {"role": "user", "content": PROMPT}
    assert [tool["function"]["name"] for tool in first["tools"]] == ["generate_image"]
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool"
    assert len(tool_message["content"]) < 1000
    assert "a lighthouse at dusk" in tool_message["content"]
    assert "base64" not in tool_message["content"] and "data:" not in tool_message["content"]
    images = model.image_requests()
    assert len(images) == 1
    assert (images[0].body or {})["prompt"] == "a lighthouse at dusk"
    assert (images[0].body or {})["size"] == "256x256"

    # What the server stored (read straight from its SQLite file).
    with sqlite3.connect(app_server.db_path) as db:
        rows = db.execute(
            "SELECT role, status, text FROM conversations_message"
            " WHERE conversation_id = ? ORDER BY id",
            (conversation_id.hex,),
        ).fetchall()
        stored = db.execute(
            "SELECT width, height, file FROM conversations_generatedimage"
            " WHERE conversation_id = ?",
            (conversation_id.hex,),
        ).fetchall()
    assert [(role, status) for role, status, _ in rows] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert rows[1][2].startswith(PREAMBLE) and FOLLOW_UP in rows[1][2]
    assert len(stored) == 1 and stored[0][:2] == (256, 256)
    assert (app_server.media_root / stored[0][2]).is_file()

    # A reload shows the whole conversation again, from the server.
    page.reload()
    expect(page).to_have_url(CONVERSATION_URL)
    expect(page.locator("#chat-title")).not_to_have_text("New chat")
    expect(page.locator("#conversation-list a[aria-current='page']")).to_have_count(1)
    expect(page.locator("article.msg-user")).to_have_text(PROMPT)
    answer = page.locator("article.msg.msg-assistant")
    expect(answer).to_have_count(1)
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer).to_contain_text(PREAMBLE)
    expect(answer).to_contain_text(FOLLOW_UP)
    image = answer.locator("figure.tool-card.is-complete img")
    assert wait_until_image_loaded(page, image) == 256
    expect(answer.locator("figure.tool-card figcaption")).to_have_text("a lighthouse at dusk")
    expect(page.locator("#send")).to_be_enabled()

    page.screenshot(path=output_dir / "chat-image.png")
    assert page_errors.errors == []


def test_an_anonymous_visitor_is_sent_to_the_login_page(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    expect(page.locator("#id_username")).to_be_visible()
    expect(page.locator("textarea#prompt")).to_have_count(0)


def test_signing_up_lands_on_the_chat_page_logged_in(page: Page, page_errors: PageErrors) -> None:
    username = f"new-{uuid.uuid4().hex[:8]}"
    page.goto("/signup/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password1").fill(PASSWORD)
    page.locator("#id_password2").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()

    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator(".account .who")).to_have_text(username)
    expect(page.locator("#chat-title")).to_have_text("New chat")
    expect(page.locator("textarea#prompt")).to_be_editable()
    expect(page.locator("#conn-status")).to_have_text("")
    # The session is real: a new visit to the login page goes straight back to the chat.
    page.goto("/login/")
    expect(page).to_have_url(re.compile(r"/$"))
    assert page_errors.errors == []
