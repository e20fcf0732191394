"""What the browser tests share: page actions, locators and reads of the server's database."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect

from tests.servers import AppServer

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CONVERSATION_URL = re.compile(rf"/c/({UUID})/$")

# Records, on every DOM change, the streamed text and status of the latest assistant
# answer. No polling and no sleeps: each websocket frame the page handles is its own
# task, so text that really streams shows up as several growing samples.
RECORD_STREAM = """() => {
  window.__stream = [];
  const thread = document.getElementById("thread");
  new MutationObserver(() => {
    const all = thread.querySelectorAll("article.msg-assistant");
    const article = all[all.length - 1];
    if (!article) return;
    const streamed = [...article.querySelectorAll(".md.stream")]
      .map((node) => node.textContent).join("");
    window.__stream.push({
      t: performance.now(),
      status: article.dataset.status || "",
      text: streamed,
      length: streamed.length,
      placeholder: Boolean(article.querySelector("figure.tool-card.is-running")),
    });
  }).observe(thread, {subtree: true, childList: true, characterData: true, attributes: true});
}"""

IMAGE_LOADED = """(img) => img.complete && img.naturalWidth > 0"""


def send(page: Page, text: str) -> None:
    """Type a message and press Enter, as a person would."""
    box = page.locator("textarea#prompt")
    box.fill(text)
    box.press("Enter")


def answers(page: Page) -> Locator:
    return page.locator("article.msg-assistant")


def last_answer(page: Page) -> Locator:
    return answers(page).last


def scroll_to_end(page: Page) -> None:
    """Scroll the thread to its end (Playwright's own scrolling may have moved it)."""
    page.locator("#messages").evaluate("(m) => { m.scrollTop = m.scrollHeight; }")


def wait_until_image_loaded(page: Page, image: Locator) -> int:
    """Wait for the <img> to be decoded; returns its natural width (0 if it never loads).

    The answer's final HTML replaces its streamed body, image cards included: an
    <img> found while streaming can be swapped for its twin mid-way, and the locator
    then finds the new one (three tries at most).
    """
    for attempt in range(3):
        expect(image).to_be_visible()
        try:
            image.scroll_into_view_if_needed()
            page.wait_for_function(IMAGE_LOADED, arg=image.element_handle())
            return int(image.evaluate("(img) => img.naturalWidth"))
        except PlaywrightError as error:
            if "not attached" not in str(error) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def assert_streamed(samples: list[dict[str, Any]], what: str) -> None:
    """The streamed text grew past where it started, in 2+ steps spread over >= 100 ms."""
    streaming = [s for s in samples if s["status"] == "streaming"]
    assert streaming, f"{what}: the answer was never seen streaming"
    start = streaming[0]["length"]
    grown = [s for s in streaming if s["length"] > start]
    steps = {s["length"] for s in grown}
    assert len(steps) >= 2, f"{what} did not stream, it arrived at once: {streaming}"
    assert grown[-1]["t"] - grown[0]["t"] >= 100, f"{what} arrived in one burst: {streaming}"


def conversation_id(page: Page) -> str:
    match = CONVERSATION_URL.search(page.url)
    assert match is not None, f"not on a conversation's page: {page.url}"
    return match.group(1)


def query(server: AppServer, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read (or change) the server's SQLite database directly."""
    with sqlite3.connect(server.db_path) as db:
        return db.execute(sql, args).fetchall()


def stored_answers(server: AppServer, conversation: str) -> list[tuple[int, str, str]]:
    """(id, status, text) of a conversation's assistant messages, oldest first."""
    rows = query(
        server,
        "SELECT id, status, text FROM conversations_message"
        " WHERE conversation_id = ? AND role = 'assistant' ORDER BY id",
        conversation.replace("-", ""),
    )
    return [(int(row[0]), str(row[1]), str(row[2])) for row in rows]


def streaming_requests(model: Any) -> list[dict[str, Any]]:
    """The chat requests that streamed an answer (not a title request)."""
    return [r.body for r in model.chat_requests() if (r.body or {}).get("stream")]


def seed_conversations(server: AppServer, username: str, titles: list[str]) -> list[str]:
    """Give a user conversations (each with one exchange), the first title the newest.

    Returns their ids in the same order.
    """
    code = f"""
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.utils import timezone
from conversations.models import Conversation
user = get_user_model().objects.get(username={username!r})
now = timezone.now()
for n, title in enumerate({titles!r}):
    when = now - timedelta(minutes=n + 1)
    c = Conversation.objects.create(user=user, title=title, created_at=when, updated_at=when)
    q = c.messages.create(role="user", text="Hello " + title)
    c.messages.create(role="assistant", reply_to=q, text="Hi! This is " + title + ".")
    print(c.id)
"""
    # (The shell also prints a line of its own; keep the ids.)
    return re.findall(UUID, server.manage("shell", "-c", code))
