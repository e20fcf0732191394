"""Edit and branch, driven from the page: edit a message, switch branches, switch versions."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Locator, Page, expect

from offline_model import OfflineModelServer, Reply
from tests.browser.helpers import answers, last_answer, send, streaming_requests


def questions(page: Page) -> Locator:
    return page.locator("article.msg-user")


def ask(page: Page, text: str) -> None:
    """Send, and wait for its answer (a new one, not the complete one before it)."""
    count = answers(page).count()
    send(page, text)
    expect(answers(page)).to_have_count(count + 1)
    expect(last_answer(page)).to_have_attribute("data-status", "complete")


def test_editing_a_message_starts_a_branch_and_the_switcher_goes_back_and_forth(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    model.script_chat(
        Reply(text="Lighthouses guide ships."),
        Reply(text="The tallest is in Saudi Arabia."),
        Reply(text="Windmills grind grain and pump water."),
    )
    log_in(user)
    ask(page, "what are lighthouses for?")
    ask(page, "which one is the tallest?")
    first = questions(page).first

    first.hover()
    first.get_by_role("button", name="Edit message").click()
    editor = first.get_by_role("textbox", name="Edit your message")
    expect(editor).to_have_value("what are lighthouses for?")
    editor.fill("what are windmills for?")
    shoot(page, "branch-editing")
    first.get_by_role("button", name="Save & submit").click()

    # The thread from the edited message down is the new branch: one question, one answer.
    expect(questions(page)).to_have_count(1)
    expect(questions(page).first.locator(".body")).to_have_text("what are windmills for?")
    expect(last_answer(page).locator(".body")).to_have_text("Windmills grind grain and pump water.")
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    edited = questions(page).first
    expect(edited.locator(".versions-label")).to_have_text("2 / 2")
    # The model was sent the edited question alone.
    sent = streaming_requests(model)[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] != "system"] == ["what are windmills for?"]
    edited.hover()
    shoot(page, "branch-edited")

    # Back to the first version: its whole branch comes back, as it was left.
    edited.get_by_role("button", name="Previous version").click()
    expect(questions(page)).to_have_count(2)
    expect(answers(page)).to_have_count(2)
    expect(questions(page).first.locator(".versions-label")).to_have_text("1 / 2")
    expect(last_answer(page).locator(".body")).to_have_text("The tallest is in Saudi Arabia.")
    expect(questions(page).first.get_by_role("button", name="Previous version")).to_be_disabled()

    # A reload shows the branch chosen last.
    page.reload()
    expect(questions(page)).to_have_count(2)
    expect(questions(page).first.locator(".versions-label")).to_have_text("1 / 2")

    model.script_chat(Reply(text="Yes, some still are."))
    ask(page, "are they still lit?")
    sent = streaming_requests(model)[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] != "system"] == [
        "what are lighthouses for?",
        "Lighthouses guide ships.",
        "which one is the tallest?",
        "The tallest is in Saudi Arabia.",
        "are they still lit?",
    ]

    questions(page).first.get_by_role("button", name="Next version").click()
    expect(questions(page)).to_have_count(1)
    expect(last_answer(page).locator(".body")).to_have_text("Windmills grind grain and pump water.")


def test_regenerate_keeps_the_old_answer_and_the_versions_switch(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    model.script_chat(
        Reply(text="A haiku about the sea."),
        Reply(text="A second haiku, about the tide.", token_delay=0.1),
    )
    log_in(user)
    ask(page, "write me a haiku")
    question = questions(page).first

    last_answer(page).get_by_role("button", name="Regenerate answer").click()
    expect(last_answer(page)).to_have_attribute("data-status", "streaming")
    # Nothing switches or edits while an answer is being written.
    expect(question.get_by_role("button", name="Edit message")).to_be_hidden()
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    expect(answers(page)).to_have_count(1)
    expect(last_answer(page).locator(".body")).to_have_text("A second haiku, about the tide.")
    versions = last_answer(page).locator(".versions-label")
    expect(versions).to_have_text("2 / 2")
    expect(question.get_by_role("button", name="Edit message")).to_be_attached()
    shoot(page, "branch-versions")

    last_answer(page).get_by_role("button", name="Previous version").click()
    expect(last_answer(page).locator(".body")).to_have_text("A haiku about the sea.")
    expect(last_answer(page).locator(".versions-label")).to_have_text("1 / 2")
    expect(answers(page)).to_have_count(1)

    last_answer(page).get_by_role("button", name="Next version").click()
    expect(last_answer(page).locator(".body")).to_have_text("A second haiku, about the tide.")
    expect(last_answer(page).locator(".versions-label")).to_have_text("2 / 2")
