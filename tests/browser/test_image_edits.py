"""Images you iterate on, in the browser: previews sharpening, Edit from the card,
"edited from" back to the parent, and several images as a grid."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Page, expect

from offline_model import OfflineModelServer
from tests.browser.helpers import (
    UUID,
    answers,
    last_answer,
    scroll_to_end,
    send,
    wait_until_image_loaded,
)

# Records, in order, each preview the running card shows and the moment the final
# image replaces it: what the person sees, whatever the speed of the machine.
WATCH_PREVIEWS = """() => {
  window.__seen = [];
  const thread = document.getElementById("thread");
  new MutationObserver(() => {
    for (const img of thread.querySelectorAll('img[data-slot="preview"]:not([hidden])')) {
      const key = `preview ${img.dataset.index}.${img.dataset.partial}`;
      if (img.src.startsWith("data:image/jpeg;base64,") && window.__seen.at(-1) !== key
          && !window.__seen.includes(key)) window.__seen.push(key);
    }
    if (thread.querySelector(".tool-card.is-complete") && !window.__seen.includes("final")) {
      window.__seen.push("final");
    }
  }).observe(thread, {subtree: true, childList: true, attributes: true});
}"""


@pytest.fixture
def slow_previews(model: OfflineModelServer) -> Iterator[OfflineModelServer]:
    """Each partial image a moment apart, so that a person (and a screenshot) sees it."""
    before = model.preview_delay
    model.preview_delay = 2.0
    try:
        yield model
    finally:
        model.preview_delay = before


def test_the_card_shows_each_preview_as_it_arrives_then_the_final_image(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    slow_previews: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    log_in(user)
    page.evaluate(WATCH_PREVIEWS)
    send(page, "draw a lighthouse at dusk")

    running = last_answer(page).locator("figure.tool-card.is-running")
    preview = running.locator('img[data-slot="preview"]')
    expect(preview).to_have_attribute("data-partial", "0")
    expect(preview).to_be_visible()
    expect(running).to_contain_text("Drawing…")
    scroll_to_end(page)
    shoot(page, "image-preview")
    expect(preview).to_have_attribute("data-partial", "1")

    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    done = last_answer(page).locator("figure.tool-card.is-complete")
    assert wait_until_image_loaded(page, done.locator("img")) == 512
    assert page.evaluate("window.__seen") == ["preview 0.0", "preview 0.1", "final"]
    # Previews live only on the page: the stored answer has the final image alone.
    assert "data:image" not in (last_answer(page).inner_html())


def test_edit_from_the_card_then_follow_edited_from_to_the_parent(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    log_in(user)
    send(page, "draw a lighthouse at dusk")
    parent_card = last_answer(page).locator("figure.tool-card.is-complete")
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    parent_item = parent_card.locator(".image-item")
    parent_id = parent_item.get_attribute("data-image-id") or ""
    assert re.fullmatch(UUID, parent_id), parent_id

    # Edit puts a ready request in the composer, naming the image; the person adds the change.
    parent_card.get_by_role("button", name="Edit this image").click()
    box = page.locator("textarea#prompt")
    expect(box).to_have_value(f"Edit image {parent_id}: ")
    expect(box).to_be_focused()
    box.press_sequentially("make it night")
    box.press("Enter")

    expect(answers(page)).to_have_count(2)
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    edited = last_answer(page).locator("figure.tool-card.is-complete")
    link = edited.locator(".edited-from a")
    expect(edited.locator(".edited-from")).to_have_text("Edited from “a lighthouse at dusk”")
    expect(link).to_have_attribute("href", f"#image-{parent_id}")
    assert wait_until_image_loaded(page, edited.locator("img")) == 512
    # The provider was sent the parent's stored bytes (the app read them from storage).
    (request,) = model.edit_requests()
    served = page.request.get(f"/images/{parent_id}/")
    assert request.files[0][3] == served.body()
    scroll_to_end(page)
    shoot(page, "image-edited")

    link.click()
    expect(page.locator(f"#image-{parent_id}")).to_be_in_viewport()
    expect(page.locator(f"#image-{parent_id}")).to_have_class(re.compile(r"\bis-flashed\b"))

    # After a reload the server's rendering says the same.
    page.reload()
    edited = last_answer(page).locator("figure.tool-card.is-complete")
    expect(edited.locator(".edited-from a")).to_have_attribute("href", f"#image-{parent_id}")


def test_several_images_of_one_call_are_a_grid_each_with_its_own_actions(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    log_in(user)
    send(page, "draw three pictures of a fox in a snowy forest")
    card = last_answer(page).locator("figure.tool-card.is-complete.is-grid")
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    items = card.locator(".image-item")
    expect(items).to_have_count(3)
    hrefs = set()
    for index in range(3):
        item = items.nth(index)
        assert wait_until_image_loaded(page, item.locator("img")) == 512
        hrefs.add(item.get_by_role("link", name="Download").get_attribute("href"))
        expect(item.get_by_role("button", name="Edit this image")).to_be_visible()
    assert len(hrefs) == 3
    scroll_to_end(page)
    shoot(page, "image-grid")

    # Edit on the second image names the second image.
    second = items.nth(1).get_attribute("data-image-id")
    items.nth(1).get_by_role("button", name="Edit this image").click()
    expect(page.locator("textarea#prompt")).to_have_value(f"Edit image {second}: ")
