"""Search from the sidebar and the keyboard; share a conversation with someone logged
out; export it as a zip with its images."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from offline_model import OfflineModelServer, Reply, ToolCall
from tests.browser.conftest import wait_until_ready
from tests.browser.helpers import (
    UUID,
    conversation_id,
    last_answer,
    send,
    wait_until_image_loaded,
)
from tests.servers import AppServer

PROMPT = "a lighthouse at dusk"


def seed(server: AppServer, username: str, chats: list[tuple[str, str]]) -> list[str]:
    """(title, answer text) conversations for a user, the first the newest; their ids."""
    code = f"""
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.utils import timezone
from conversations.models import Conversation
user = get_user_model().objects.get(username={username!r})
now = timezone.now()
for n, (title, text) in enumerate({chats!r}):
    when = now - timedelta(minutes=n + 1)
    c = Conversation.objects.create(user=user, title=title, created_at=when, updated_at=when)
    q = c.messages.create(role="user", text="Tell me about " + title)
    c.messages.create(role="assistant", reply_to=q, text=text)
    print(c.id)
"""
    return re.findall(UUID, server.manage("shell", "-c", code))


def draw(page: Page, model: OfflineModelServer) -> str:
    """Ask for a picture in a new chat; returns the conversation id once it shows."""
    model.script_chat(
        Reply(text="Painting it now.", tool_calls=[ToolCall(arguments={"prompt": PROMPT})]),
        Reply(text="Here is your lighthouse, with its beam on."),
    )
    send(page, "draw a lighthouse at dusk")
    # The final HTML replaces the streamed body: wait for it before the picture.
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    image = last_answer(page).locator("figure.tool-card.is-complete img")
    assert wait_until_image_loaded(page, image) > 0
    return conversation_id(page)


def test_search_finds_a_conversation_by_a_word_of_its_text_or_title_with_the_match_marked(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    app_server: AppServer,
    shoot: Callable[..., None],
) -> None:
    harbour, kites, _ = seed(
        app_server,
        user,
        [
            ("Harbour walk", "Harbours shelter boats from storms; the breakwater takes the waves."),
            ("Kite festival", "Bring a <b>spare</b> line: kites pull hard in gusts."),
            ("Groceries", "Eggs, milk, bread."),
        ],
    )
    log_in(user)
    box = page.get_by_role("combobox", name="Search conversations")

    # The keyboard: Ctrl+K from anywhere focuses the box.
    page.locator("textarea#prompt").focus()
    page.keyboard.press("Control+k")
    expect(box).to_be_focused()
    box.press_sequentially("breakwat")
    results = page.get_by_role("listbox", name="Search results")
    options = results.get_by_role("option")
    expect(options).to_have_count(1)
    expect(options.first.locator(".search-title")).to_have_text("Harbour walk")
    expect(options.first.locator("mark")).to_have_text("breakwater")
    expect(page.locator("#conversation-list")).to_be_hidden()
    shoot(page, "search")

    # The title counts too, and the text comes through as text (no <b> made bold).
    box.fill("kite")
    expect(options).to_have_count(1)
    expect(options.first.locator(".search-title mark")).to_have_text("Kite")
    expect(options.first.locator(".search-snippet")).to_contain_text("<b>spare</b>")
    expect(options.first.locator(".search-snippet b")).to_have_count(0)

    # Two results; the arrows move, Enter opens the chosen one.
    box.fill("storms OR")  # every word must match: "or" is in no text
    expect(results.locator(".search-none")).to_contain_text("No conversation matches")
    box.fill("about")  # every question is "Tell me about …"
    expect(options).to_have_count(3)
    box.press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    box.press("Enter")
    expect(page).to_have_url(re.compile(rf"/c/{kites}/$"))
    wait_until_ready(page)

    # Escape clears the search and brings the list back.
    page.keyboard.press("Control+k")
    box.fill("harbour")
    expect(options).to_have_count(1)
    box.press("Escape")
    expect(box).to_have_value("")
    expect(page.locator("#conversation-list")).to_be_visible()
    assert harbour


def test_a_share_link_opens_logged_out_with_its_images_and_is_gone_after_revoking(
    page: Page,
    open_page: Callable[..., Page],
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[..., None],
) -> None:
    log_in(user)
    draw(page, model)

    page.get_by_role("button", name="Share conversation").click()
    dialog = page.get_by_role("dialog", name="Share this conversation")
    expect(dialog).to_be_visible()
    dialog.get_by_label("The link works").select_option("7")
    dialog.get_by_role("button", name="Create link").click()
    link = dialog.get_by_role("textbox", name="Link")
    expect(link).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/s/[\w-]+/$"))
    expect(dialog).to_contain_text("The link stops working on")
    url = link.input_value()
    shoot(page, "share-dialog")

    # Someone with no account, in a browser of their own.
    stranger = open_page()
    response = stranger.goto(url)
    assert response is not None and response.status == 200
    expect(stranger.get_by_role("heading", level=1)).to_have_text("draw a lighthouse at dusk")
    expect(stranger.locator(".msg-assistant")).to_contain_text("Here is your lighthouse")
    image = stranger.locator("figure.shared-image img")
    assert wait_until_image_loaded(stranger, image) > 0
    source = image.get_attribute("src") or ""
    token = url.rstrip("/").rsplit("/", 1)[1]
    assert source.startswith(f"/s/{token}/images/"), source
    expect(stranger.locator("textarea")).to_have_count(0)  # read-only: no composer
    shoot(stranger, "shared")

    # The owner stops sharing: the page and its image are gone for the stranger.
    page.get_by_role("button", name="Stop sharing").click()
    expect(dialog.get_by_role("button", name="Create link")).to_be_visible()
    response = stranger.goto(url)
    assert response is not None and response.status == 404
    expect(stranger.get_by_role("heading", level=1)).to_have_text("Not found")
    assert stranger.request.get(source).status == 404


def test_export_downloads_a_zip_with_the_images(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    tmp_path: Path,
) -> None:
    log_in(user)
    draw(page, model)
    page.get_by_role("button", name="Export conversation").click()  # the menu's summary
    with page.expect_download() as info:
        page.get_by_role("link", name="Zip with images").click()
    download = info.value
    assert download.suggested_filename == "chatimg-draw-a-lighthouse-at-dusk.zip"
    path = tmp_path / "export.zip"
    download.save_as(path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        images = [name for name in names if name.startswith("images/")]
        assert "conversation.md" in names and len(images) == 1
        markdown = archive.read("conversation.md").decode()
        assert f"]({images[0]})" in markdown
        assert "Here is your lighthouse" in markdown
        assert archive.read(images[0]).startswith(b"\x89PNG")

    with page.expect_download() as info:
        page.get_by_role("button", name="Export conversation").click()
        page.get_by_role("link", name="Markdown (.md)").click()
    assert info.value.suggested_filename == "chatimg-draw-a-lighthouse-at-dusk.md"
