"""The conversation list: newest first, more on demand, rename, delete, live titles."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from playwright.sync_api import Locator, Page, expect

from offline_model import OfflineModelServer, Reply
from tests.browser.conftest import log_in_as, wait_until_ready
from tests.browser.helpers import (
    CONVERSATION_URL,
    last_answer,
    query,
    seed_conversations,
    send,
)
from tests.servers import AppServer
from tests.waiting import within


def entries(page: Page) -> Locator:
    return page.locator("#conversation-list > li")


def test_the_list_is_newest_first_and_loads_more_as_you_scroll(
    page: Page, log_in: Callable[[str], None], user: str, app_server: AppServer
) -> None:
    titles = [f"Chat {n:02d}" for n in range(35, 0, -1)]  # "Chat 35" is the newest
    seed_conversations(app_server, user, titles)
    log_in(user)

    expect(entries(page)).to_have_count(30)
    expect(entries(page).first).to_have_text("Chat 35")
    expect(entries(page).last).to_have_text("Chat 06")
    more = page.get_by_role("button", name="Load more")
    expect(more).to_be_attached()

    page.locator("#sidebar").evaluate("(s) => { s.scrollTop = s.scrollHeight; }")

    expect(entries(page)).to_have_count(35)
    expect(entries(page).last).to_have_text("Chat 01")
    expect(more).to_be_hidden()
    assert entries(page).all_inner_texts() == titles


def test_rename_and_delete_conversations(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    app_server: AppServer,
    shoot: Callable[[Page, str], None],
) -> None:
    alpha, beta, gamma = seed_conversations(app_server, user, ["Alpha", "Beta", "Gamma"])
    log_in(user)
    page.goto(f"/c/{alpha}/")
    wait_until_ready(page)
    beta_entry = page.locator(f'#conversation-list li[data-conversation-id="{beta}"]')

    # Rename another conversation in place, from the sidebar (Enter saves).
    beta_entry.hover()
    beta_entry.get_by_role("button", name="Rename “Beta”").click()
    field = beta_entry.get_by_role("textbox", name="Conversation title")
    expect(field).to_be_focused()
    field.fill("Beta, renamed")
    field.press("Enter")
    expect(beta_entry).to_have_text("Beta, renamed")
    expect(beta_entry.get_by_role("button", name="Rename “Beta, renamed”")).to_be_attached()

    # Escape leaves the title alone.
    page.get_by_role("button", name="Rename conversation").click()
    page.get_by_role("textbox", name="Conversation title").fill("never mind")
    page.keyboard.press("Escape")
    expect(page.locator("#chat-title")).to_have_text("Alpha")

    # Rename the open one from its header: header, sidebar and tab title follow.
    page.get_by_role("button", name="Rename conversation").click()
    page.get_by_role("textbox", name="Conversation title").fill("Alpha  prime ")
    page.keyboard.press("Enter")
    expect(page.locator("#chat-title")).to_have_text("Alpha prime")
    expect(page).to_have_title("Alpha prime · chatimg")
    expect(page.locator(f'li[data-conversation-id="{alpha}"]')).to_have_text("Alpha prime")

    # Delete needs no native dialog: the entry goes at once, with a few seconds to undo.
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    gamma_entry = page.locator(f'#conversation-list li[data-conversation-id="{gamma}"]')
    undo_bar = page.locator("#undo-bar")
    gamma_entry.hover()
    gamma_entry.get_by_role("button", name="Delete “Gamma”").click()
    expect(gamma_entry).to_be_hidden()
    expect(undo_bar).to_have_text(re.compile(r"Deleted “Gamma”\.\s*Undo"))
    expect(undo_bar.get_by_role("button", name="Undo")).to_be_focused()
    shoot(page, "delete-undo")
    undo_bar.get_by_role("button", name="Undo").click()
    expect(gamma_entry).to_be_visible()
    expect(undo_bar).to_be_hidden()
    assert stored(app_server, gamma)
    # Without Undo it is deleted for good once the bar has gone.
    gamma_entry.hover()
    gamma_entry.get_by_role("button", name="Delete “Gamma”").click()
    expect(undo_bar).to_be_visible()
    expect(undo_bar).to_be_hidden(timeout=20_000)
    expect(gamma_entry).to_have_count(0)
    assert within(lambda: not stored(app_server, gamma), timeout=20)

    # Stored: a reload shows the same.
    page.reload()
    wait_until_ready(page)
    expect(entries(page)).to_have_text(["Alpha prime", "Beta, renamed"])

    # Leaving the page while Undo is offered deletes it all the same.
    beta_entry.hover()
    beta_entry.get_by_role("button", name="Delete “Beta, renamed”").click()
    expect(undo_bar).to_be_visible()
    page.goto(f"/c/{alpha}/")
    wait_until_ready(page)
    assert within(lambda: not stored(app_server, beta), timeout=20)
    page.reload()
    wait_until_ready(page)
    expect(entries(page)).to_have_text(["Alpha prime"])

    # Deleting the open conversation leaves for a new chat.
    page.get_by_role("button", name="Delete conversation").click()
    expect(page.locator("#main")).to_have_class(re.compile(r"is-deleting"))
    expect(page).to_have_url(re.compile(r"/$"), timeout=20_000)
    expect(entries(page)).to_have_count(0)
    expect(page.locator("#list-empty")).to_be_visible()
    assert dialogs == []


def stored(server: AppServer, conversation: str) -> bool:
    return bool(
        query(
            server,
            "SELECT 1 FROM conversations_conversation WHERE id = ?",
            conversation.replace("-", ""),
        )
    )


def test_only_the_owner_can_rename_or_delete(
    page: Page, log_in: Callable[[str], None], user: str, app_server: AppServer
) -> None:
    someone = f"other-{uuid.uuid4().hex[:8]}"
    app_server.create_user(someone)
    [theirs] = seed_conversations(app_server, someone, ["Private"])
    log_in(user)
    token = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    headers = {"X-CSRFToken": token, "Accept": "application/json"}
    rename = page.request.post(f"/c/{theirs}/rename/", form={"title": "mine now"}, headers=headers)
    delete = page.request.post(f"/c/{theirs}/delete/", headers=headers)
    assert (rename.status, delete.status) == (404, 404)
    assert page.request.get("/c/?before=yesterday&id=nope").status == 400
    assert query(
        app_server,
        "SELECT title FROM conversations_conversation WHERE id = ?",
        theirs.replace("-", ""),
    ) == [("Private",)]


def test_sending_moves_a_conversation_to_the_top(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    app_server: AppServer,
    model: OfflineModelServer,
) -> None:
    _, older = seed_conversations(app_server, user, ["Newer", "Older"])
    model.script_chat(Reply(text="Back again."))
    log_in(user)
    page.goto(f"/c/{older}/")
    wait_until_ready(page)
    expect(entries(page)).to_have_text(["Newer", "Older"])
    send(page, "back to this one")
    expect(last_answer(page).locator(".body")).to_have_text("Back again.")
    expect(entries(page)).to_have_text(["Older", "Newer"])
    expect(entries(page).first.locator("a")).to_have_attribute("aria-current", "page")


def test_a_title_written_by_the_model_appears_live(
    open_page: Callable[..., Page], titled_app_server: AppServer, model: OfflineModelServer
) -> None:
    username = f"titles-{uuid.uuid4().hex[:8]}"
    titled_app_server.create_user(username)
    # The answer, then the small title request that follows a first exchange.
    model.script_chat(Reply(text="Lighthouses guide ships."), Reply(text='"Lighthouse facts"'))
    page = open_page(base_url=titled_app_server.url)
    log_in_as(page, username)
    send(page, "tell me about lighthouses")
    expect(page).to_have_url(CONVERSATION_URL)
    expect(page.locator("#chat-title")).to_have_text("Lighthouse facts")
    expect(page).to_have_title("Lighthouse facts · chatimg")
    expect(entries(page)).to_have_text(["Lighthouse facts"])
