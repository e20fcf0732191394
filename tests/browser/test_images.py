"""Image cards: generating (prompt and a running clock), done (caption, notes, download,
enlarge), failed, and removed by a moderator."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import Page, expect

from offline_model import Fail, ImageReply, OfflineModelServer, Reply, ToolCall
from tests.browser.conftest import wait_until_ready
from tests.browser.helpers import (
    UUID,
    conversation_id,
    last_answer,
    query,
    scroll_to_end,
    send,
    wait_until_image_loaded,
)
from tests.servers import AppServer

PROMPT = "a red kite over green hills"
REVISED = "A red kite soaring over rolling green hills, in watercolour"


def test_an_image_is_generated_before_your_eyes_then_can_be_enlarged_and_downloaded(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    # The model asks for a size the image model does not offer: the app drops it and says so.
    call = ToolCall(arguments={"prompt": PROMPT, "size": "999x999"})
    model.script_chat(Reply(text="Painting it now.", tool_calls=[call]))
    model.script_images(ImageReply(delay=3.0, revised_prompt=REVISED))
    log_in(user)
    expect(page.locator("#images-left")).to_have_text("50 images left today")
    send(page, "paint me a kite")

    card = last_answer(page).locator("figure.tool-card.is-running")
    expect(card.locator("figcaption")).to_have_text(PROMPT)
    expect(card).to_contain_text("Generating image…")
    elapsed = card.locator(".elapsed")
    expect(elapsed).to_have_text("0 s")
    expect(elapsed).to_have_text("1 s")  # it ticks
    shoot(page, "image-generating")

    # After a reload the clock goes on from when the call started, not from zero.
    page.reload()
    wait_until_ready(page)
    card = last_answer(page).locator("figure.tool-card.is-running")
    seconds = int(card.locator(".elapsed").inner_text().split()[0])
    assert seconds >= 1, f"the clock restarted after the reload: {seconds} s"
    expect(card.locator("figcaption")).to_have_text(PROMPT)

    done = last_answer(page).locator("figure.tool-card.is-complete")
    expect(done.locator(".caption")).to_have_text(REVISED)
    expect(done.locator(".image-notes")).to_contain_text("'999x999' is not supported")
    expect(page.locator("#images-left")).to_have_text("49 images left today")
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    # The server's final rendering (it replaced the live card) keeps caption and notes.
    expect(done.locator(".caption")).to_have_text(REVISED)
    expect(done.locator(".image-notes")).to_contain_text("'999x999' is not supported")
    image = done.locator("img")
    assert wait_until_image_loaded(page, image) == 512
    scroll_to_end(page)
    shoot(page, "image-done")

    # Download: the app's own image URL asking for "save as" (the download
    # attribute alone is ignored when S3's redirect leaves our origin).
    download = done.get_by_role("link", name="Download")
    href = download.get_attribute("href") or ""
    assert re.fullmatch(rf"/images/{UUID}/\?download=1", href), href
    assert download.get_attribute("download")
    assert image.get_attribute("src") == href.removesuffix("?download=1")
    response = page.request.get(href)
    assert response.status == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"].startswith("attachment;")

    # Enlarge: click the picture; Escape closes and focus goes back to it.
    opener = done.get_by_role("button", name="Enlarge image")
    opener.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("img")).to_have_attribute("src", re.compile(rf"/images/{UUID}/$"))
    expect(dialog).to_contain_text(REVISED)
    expect(dialog.get_by_role("button", name="Close")).to_be_focused()
    shoot(page, "image-enlarged")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(opener).to_be_focused()
    # …and the Enlarge button with the close button, from the keyboard.
    done.get_by_role("button", name="Enlarge", exact=True).press("Enter")
    expect(dialog).to_be_visible()
    page.keyboard.press("Enter")  # the focused Close button
    expect(dialog).to_be_hidden()


def test_a_failed_image_says_why(
    page: Page, log_in: Callable[[str], None], user: str, model: OfflineModelServer
) -> None:
    model.script_images(Fail(400, message="Nope.", code="content_policy_violation"))
    log_in(user)
    send(page, "draw a forbidden thing")

    card = last_answer(page).locator("figure.tool-card.is-failed")
    expect(card).to_contain_text("The image could not be made")
    expect(card.locator(".image-failed-reason")).to_have_text(
        "The image service refused this prompt (content policy)."
    )
    expect(card.locator("figcaption")).to_have_text("a forbidden thing")
    expect(card.locator("img")).to_have_count(0)
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    # Rendered by the server after a reload, it says the same.
    page.reload()
    wait_until_ready(page)
    expect(last_answer(page).locator(".image-failed-reason")).to_have_text(
        "The image service refused this prompt (content policy)."
    )


def test_an_image_a_moderator_hid_is_replaced_by_a_notice(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    app_server: AppServer,
) -> None:
    log_in(user)
    send(page, "draw a lighthouse at dusk")
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    image = last_answer(page).locator("figure.tool-card.is-complete img")
    wait_until_image_loaded(page, image)
    url = image.get_attribute("src") or ""

    query(
        app_server,
        "UPDATE conversations_generatedimage SET review_status = 'hidden'"
        " WHERE conversation_id = ?",
        conversation_id(page).replace("-", ""),
    )
    page.reload()
    wait_until_ready(page)

    card = last_answer(page).locator("figure.tool-card")
    expect(card).to_have_text("Image removed by a moderator")
    expect(page.locator("#thread img")).to_have_count(0)
    expect(page.locator(f'#thread [href="{url}"]')).to_have_count(0)
    assert page.request.get(url).status == 404
