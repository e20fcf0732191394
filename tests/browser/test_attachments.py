"""Attaching images (button, drag and drop, paste), the gallery, and the admin's thumbnails."""

from __future__ import annotations

import base64
import io
import re
import uuid
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, expect

from offline_model import OfflineModelServer, Reply
from tests.browser.conftest import log_in_as, wait_until_ready
from tests.browser.helpers import (
    conversation_id,
    last_answer,
    query,
    send,
    streaming_requests,
    wait_until_image_loaded,
)
from tests.servers import AppServer

#: Builds a File from base64 in the page and hands it over as a drop or a paste would.
DROP = """([selector, kind, name, data]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "image/png" }));
  const target = document.querySelector(selector);
  const options = { bubbles: true, cancelable: true };
  if (kind === "paste") {
    target.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, ...options }));
    return;
  }
  for (const type of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, ...options }));
  }
}"""


def picture(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> Path:
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 40):  # stripes, so that the thumbnail visibly is this picture
        for y in range(size[1]):
            image.putpixel((x, y), (255, 255, 255))
    image.save(path)
    return path


def png_base64(color: tuple[int, int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", (200, 150), color).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def stored_attachments(server: AppServer, conversation: str) -> list[tuple[str, int, int]]:
    rows = query(
        server,
        "SELECT id, width, height FROM conversations_attachment WHERE conversation_id = ?"
        " ORDER BY width",
        conversation.replace("-", ""),
    )
    return [(str(row[0]), int(row[1]), int(row[2])) for row in rows]


def test_images_attached_by_button_and_by_drop_go_with_the_message_and_show_in_it(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    app_server: AppServer,
    tmp_path: Path,
    shoot: Callable[..., None],
) -> None:
    model.script_chat(Reply(tokens=["Two", " lovely", " pictures."]))
    log_in(user)
    expect(page.locator("#images-left")).to_have_text("50 images left today")

    # By the clip button: the browser's own file chooser.
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Attach images").click()
    chooser.value.set_files(picture(tmp_path / "harbour.png", (20, 90, 160)))
    tray = page.locator("#attachment-tray")
    expect(tray.locator('.attachment-chip[data-state="ready"]')).to_have_count(1)

    # By drag and drop onto the composer.
    page.evaluate(DROP, ["#composer", "drop", "field.png", png_base64((40, 160, 60))])
    expect(tray.locator('.attachment-chip[data-state="ready"]')).to_have_count(2)
    expect(page.locator("#images-left")).to_have_text("48 images left today")  # uploads count
    page.locator("textarea#prompt").fill("what do you see in these two?")
    shoot(page, "attachments-tray")

    page.locator("textarea#prompt").press("Enter")

    expect(tray).to_be_hidden()
    mine = page.locator("article.msg-user").last
    thumbs = mine.locator(".msg-attachments img")
    expect(thumbs).to_have_count(2)
    for index in range(2):
        assert wait_until_image_loaded(page, thumbs.nth(index)) > 0
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    conversation = conversation_id(page)
    stored = stored_attachments(app_server, conversation)
    assert [(w, h) for _, w, h in stored] == [(200, 150), (320, 240)]
    said = streaming_requests(model)[-1]["messages"][-1]["content"]
    assert said.startswith("what do you see in these two?")
    for attachment_id, _, _ in stored:
        assert f"[image attachment {uuid.UUID(attachment_id)}]" in said
    shoot(page, "attachments-sent")

    # After a reload the server renders the same thumbnails.
    page.reload()
    wait_until_ready(page)
    thumbs = page.locator("article.msg-user .msg-attachments img")
    expect(thumbs).to_have_count(2)
    assert wait_until_image_loaded(page, thumbs.first) > 0


def test_a_pasted_image_is_attached_and_a_bad_file_is_refused_in_words(
    page: Page, log_in: Callable[[str], None], user: str, app_server: AppServer
) -> None:
    log_in(user)
    page.evaluate(DROP, ["#prompt", "paste", "image.png", png_base64((200, 40, 40))])
    tray = page.locator("#attachment-tray")
    expect(tray.locator('.attachment-chip[data-state="ready"]')).to_have_count(1)

    # A text file that claims to be a PNG: the server reads the bytes and says no.
    fake = base64.b64encode(b"I am not a picture, honest").decode()
    page.evaluate(DROP, ["#composer", "drop", "holiday.png", fake])
    expect(tray.locator('.attachment-chip[data-state="failed"]')).to_have_count(1)
    error = page.locator("#composer-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("not a PNG, JPEG, WebP or GIF")
    count = query(app_server, "SELECT count(*) FROM conversations_attachment")[0][0]
    assert count >= 1

    # Removing a chip takes it out of the message.
    tray.locator('.attachment-chip[data-state="failed"] [data-action="remove-attachment"]').click()
    expect(tray.locator(".attachment-chip")).to_have_count(1)


def test_the_gallery_lists_my_images_and_opens_the_conversation_at_one(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[..., None],
) -> None:
    log_in(user)
    done = page.locator('article.msg-assistant[data-status="complete"]')
    for count, text in enumerate(
        ("draw a lighthouse at dusk", "draw a fox in the snow", "draw a red kite over green hills"),
        start=1,
    ):
        send(page, text)
        expect(done).to_have_count(count)
    first_conversation = conversation_id(page)
    page.get_by_role("link", name="New chat").click()
    wait_until_ready(page)
    send(page, "draw a boat on a calm sea")
    expect(done).to_have_count(1)

    page.get_by_role("link", name="My images").click()
    expect(page).to_have_url(re.compile(r"/images/$"))
    items = page.locator(".gallery-item")
    expect(items).to_have_count(4)
    expect(items.first).to_contain_text("boat")  # newest first
    for index in range(4):
        assert wait_until_image_loaded(page, items.nth(index).locator("img")) > 0
    shoot(page, "gallery")

    # Filtered to the first conversation, then opened at its first picture.
    page.locator("#gallery-conversation").select_option(first_conversation)
    expect(page).to_have_url(re.compile(rf"conversation={first_conversation}"))
    expect(items).to_have_count(3)
    # The oldest: the thread opens at the end, so it has to scroll back up to it.
    target = items.filter(has=page.locator(".gallery-caption", has_text="a lighthouse at dusk"))
    image_id = target.locator("a").get_attribute("data-image-id")
    target.locator("a").click()
    expect(page).to_have_url(re.compile(rf"/c/{first_conversation}/#image-{image_id}$"))
    wait_until_ready(page)
    figure = page.locator(f"#image-{image_id}")
    expect(figure).to_be_in_viewport()
    expect(figure).to_have_class(re.compile(r"is-target"))


def test_staff_see_stored_thumbnails_in_the_admin(
    page: Page,
    user: str,
    app_server: AppServer,
    model: OfflineModelServer,
    shoot: Callable[..., None],
) -> None:
    query(
        app_server,
        "UPDATE auth_user SET is_staff = 1, is_superuser = 1 WHERE username = ?",
        user,
    )
    log_in_as(page, user)
    send(page, "draw a lighthouse at dusk")
    expect(last_answer(page)).to_have_attribute("data-status", "complete")

    page.goto("/admin/conversations/generatedimage/")
    thumb = page.locator("#result_list img").first
    assert wait_until_image_loaded(page, thumb) == 256  # the stored WebP, not the 512 px PNG
    assert re.search(r"/images/[0-9a-f-]{36}/thumb/$", thumb.get_attribute("src") or "")
    shoot(page, "admin-thumbnails")

    # The image page's File link opens the image through the app.
    page.locator("#result_list a img").first.click()
    link = page.locator(".field-file_link a").first
    with page.expect_popup() as popup:
        link.click()
    expect(popup.value.locator("img")).to_have_count(1)
    popup.value.close()

    # The transcript's Enlarge buttons open the picture.
    page.goto("/admin/conversations/conversation/")
    page.locator("#result_list tbody a").first.click()
    with page.expect_popup() as enlarged:
        page.locator('.chatimg-transcript [data-action="enlarge"]').first.click()
    expect(enlarged.value).to_have_url(re.compile(r"/images/[0-9a-f-]{36}/$"))
    enlarged.value.close()
    # No "+ Add" for conversations.
    expect(page.get_by_role("link", name=re.compile("Add conversation"))).to_have_count(0)
