"""The message box: Enter and Shift+Enter, growing, busy while an answer runs, drafts."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from offline_model import OfflineModelServer, Reply
from tests.browser.conftest import wait_until_ready
from tests.browser.helpers import (
    CONVERSATION_URL,
    last_answer,
    seed_conversations,
    streaming_requests,
)
from tests.servers import AppServer


def test_enter_sends_shift_enter_starts_a_new_line_and_the_box_grows(
    page: Page, log_in: Callable[[str], None], user: str, model: OfflineModelServer
) -> None:
    model.script_chat(Reply(tokens=[f"t{n} " for n in range(30)], token_delay=0.05))
    log_in(user)
    box = page.locator("textarea#prompt")
    expect(box).to_be_focused()
    expect(page.locator("#send")).to_be_disabled()  # nothing to send yet
    one_line = box.bounding_box()["height"]  # type: ignore[index]

    box.press_sequentially("line one")
    box.press("Shift+Enter")
    box.press_sequentially("line two")
    box.press("Shift+Enter")
    box.press_sequentially("line three")
    expect(box).to_have_value("line one\nline two\nline three")
    assert box.bounding_box()["height"] > one_line * 2  # type: ignore[index]
    assert streaming_requests(model) == []

    box.press("Enter")
    expect(page.locator("article.msg-user .body")).to_have_text("line one\nline two\nline three")
    expect(box).to_have_value("")
    expect(last_answer(page)).to_have_attribute("data-status", "streaming")
    assert box.bounding_box()["height"] == one_line  # type: ignore[index]

    # While the answer runs: typing is fine, sending is not (Stop instead of Send).
    expect(page.locator("#stop")).to_be_visible()
    box.press_sequentially("next question")
    box.press("Enter")
    expect(box).to_have_value("next question")
    expect(page.locator("article.msg-user")).to_have_count(1)
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    expect(page.locator("#send")).to_be_enabled()
    assert len(streaming_requests(model)) == 1


def test_a_draft_survives_a_reload_and_moves_with_a_new_chat_to_its_address(
    page: Page, log_in: Callable[[str], None], user: str, model: OfflineModelServer
) -> None:
    model.script_chat(Reply(text="Noted."))
    log_in(user)
    box = page.locator("textarea#prompt")
    box.press_sequentially("half a thought")
    page.reload()
    wait_until_ready(page)
    expect(box).to_have_value("half a thought")

    box.fill("the first message")
    box.press("Enter")
    expect(page).to_have_url(CONVERSATION_URL)
    box.press_sequentially("a draft for the next one")
    page.reload()
    wait_until_ready(page)
    expect(page).to_have_url(CONVERSATION_URL)
    expect(box).to_have_value("a draft for the next one")
    # The new-chat page has no draft left over.
    page.get_by_role("link", name="New chat").click()
    wait_until_ready(page)
    expect(box).to_have_value("")


def test_the_box_is_focused_when_a_conversation_opens(
    page: Page, log_in: Callable[[str], None], user: str, app_server: AppServer
) -> None:
    [older, newer] = seed_conversations(app_server, user, ["Older", "Newer"])
    log_in(user)
    page.locator(f'#conversation-list li[data-conversation-id="{newer}"] a').click()
    wait_until_ready(page)
    expect(page.locator("textarea#prompt")).to_be_focused()
    page.goto(f"/c/{older}/")
    wait_until_ready(page)
    expect(page.locator("textarea#prompt")).to_be_focused()
    page.keyboard.type("typed straight away")
    expect(page.locator("textarea#prompt")).to_have_value("typed straight away")


def test_a_paste_over_the_limit_is_kept_whole_and_explained(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    log_in(user)
    limit = int(page.locator("#main").get_attribute("data-max-chars") or 0)
    assert limit > 100
    box = page.locator("textarea#prompt")
    counter = page.locator("#char-count")
    expect(counter).to_be_hidden()  # far from the limit: no counter

    near = "n" * (limit - 10)
    page.evaluate("(text) => navigator.clipboard.writeText(text)", near)
    box.focus()
    page.keyboard.press("Control+V")
    expect(counter).to_be_visible()
    expect(counter).to_have_text(f"{limit - 10:,} / {limit:,}")
    expect(page.locator("#send")).to_be_enabled()

    # A paste that goes over: nothing is cut, the counter says by how much, Send waits.
    page.evaluate("(text) => navigator.clipboard.writeText(text)", "x" * 35)
    page.keyboard.press("Control+V")
    assert len(box.input_value()) == limit + 25
    expect(counter).to_have_text(f"25 characters too long: the limit is {limit:,}")
    expect(box).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#send")).to_be_disabled()
    shoot(page, "composer-limit")
    box.press("Enter")
    expect(page.locator("article.msg-user")).to_have_count(0)
    assert streaming_requests(model) == []
    # Shortened to the limit, it sends.
    for _ in range(25):
        box.press("Backspace")
    expect(counter).to_have_text(f"{limit:,} / {limit:,}")
    expect(box).not_to_have_attribute("aria-invalid", "true")
    box.press("Enter")
    expect(page.locator("article.msg-user")).to_have_count(1)
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    expect(counter).to_be_hidden()


def test_a_suggestion_chip_asks_its_question(
    page: Page, log_in: Callable[[str], None], user: str, model: OfflineModelServer
) -> None:
    model.script_chat(Reply(text="Websockets keep one connection open both ways."))
    log_in(user)
    chip = page.get_by_role("button", name="Explain websockets in one paragraph")
    chip.click()
    expect(page.locator("article.msg-user .body")).to_have_text(
        "Explain websockets in one paragraph"
    )
    expect(last_answer(page)).to_contain_text("one connection open both ways")
    expect(page).to_have_url(CONVERSATION_URL)
    expect(page.locator("textarea#prompt")).to_have_value("")
