"""How the page looks and reads: Markdown, phones, the dark theme, the keyboard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from offline_model import OfflineModelServer, Reply, tokenize
from tests.browser.conftest import log_in_as
from tests.browser.helpers import (
    RECORD_STREAM,
    last_answer,
    scroll_to_end,
    send,
    wait_until_image_loaded,
)

CODE = 'def greet(name):\n    return f"Hello, {name}!"\n'
MARKDOWN = f"""## A small example

Here is **bold**, *emphasis*, `inline code` and a [safe link](https://example.com).
This [bad link](javascript:alert(1)) must not be clickable, nor this picture:
![tracker](https://evil.example/x.png)

1. First step
2. Second step

> Quoted wisdom.

```python
{CODE}```

| Name | Role |
| --- | --- |
| Ada | Engineer |
| Linus | Maintainer |
"""

LONG_WORD = "Supercalifragilistic" * 12
WIDE = f"""A very long word: {LONG_WORD}

```text
{"x = [" + ", ".join(str(n) for n in range(120)) + "]"}
```

| {" | ".join(f"Column {n}" for n in range(14))} |
| {" | ".join("---" for _ in range(14))} |
| {" | ".join(f"value number {n}" for n in range(14))} |

See https://example.com/{"a" * 150}
"""


def test_markdown_renders_as_it_streams_then_the_server_html_with_copyable_code(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    model.script_chat(Reply(tokens=tokenize(MARKDOWN), token_delay=0.02))
    log_in(user)
    shoot(page, "chat-empty")
    page.evaluate(RECORD_STREAM)
    send(page, "show me some markdown")

    # While it streams, the text is already formatted (rendered in the page)…
    answer = last_answer(page)
    stream = answer.locator(".md.stream")
    expect(stream.locator("h2")).to_have_text("A small example")
    expect(stream.locator("strong")).to_have_text("bold")
    expect(stream.locator("ol > li")).to_have_count(2)
    expect(answer).to_have_attribute("data-status", "streaming")
    # (The README's streaming picture is test_markdown_stream's: a slower answer.)
    # …and at the end the server's sanitised HTML replaces it.
    expect(answer).to_have_attribute("data-status", "complete")
    body = answer.locator(".body")
    expect(body.locator("h2")).to_have_text("A small example")
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("pre code")).to_have_count(1)
    expect(body.locator("ol > li")).to_have_count(2)
    expect(body.locator("blockquote")).to_contain_text("Quoted wisdom.")
    expect(body.locator(".table-wrap table tr")).to_have_count(3)
    expect(body.locator('a[href^="javascript:"]')).to_have_count(0)
    expect(body.locator("img")).to_have_count(0)
    safe = body.get_by_role("link", name="safe link")
    expect(safe).to_have_attribute("target", "_blank")
    rel = safe.get_attribute("rel") or ""
    assert "noopener" in rel and "noreferrer" in rel
    samples: list[dict[str, Any]] = page.evaluate("window.__stream")
    assert not any("```" in s["text"] for s in samples), "a fence mark was shown as text"
    scroll_to_end(page)
    shoot(page, "chat-markdown")

    # Copy on a code block puts exactly the code on the clipboard.
    block = body.locator(".code-block")
    expect(block.locator(".code-head")).to_contain_text("python")
    block.get_by_role("button", name="Copy code").click()
    expect(block.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    # Finished answers are announced once, to screen readers, not word by word.
    expect(page.locator("#announcer")).to_contain_text("A small example")
    expect(page.locator("#messages")).not_to_have_attribute("aria-live", "polite")
    # Copy under the answer copies its Markdown, as the model wrote it (and after a reload).
    answer.get_by_role("button", name="Copy answer").click()
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN.strip()
    page.evaluate("navigator.clipboard.writeText('')")
    page.reload()
    last_answer(page).get_by_role("button", name="Copy answer").click()
    expect(last_answer(page).get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN.strip()


def test_on_a_phone_nothing_scrolls_sideways_and_the_sidebar_is_a_drawer(
    open_page: Callable[..., Page],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    model.script_chat(Reply(tokens=[WIDE]))
    page = open_page(
        viewport={"width": 375, "height": 812},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    log_in_as(page, user)
    send(page, LONG_WORD + " and a long question")
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-status", "complete")

    fits = """() => document.documentElement.scrollWidth <= window.innerWidth
      && document.getElementById("messages").scrollWidth
         <= document.getElementById("messages").clientWidth"""
    assert page.evaluate(fits), "the page scrolls sideways at 375 px"
    # Wide things scroll inside their own box instead.
    for box in (answer.locator("pre"), answer.locator(".table-wrap")):
        assert box.evaluate("(el) => el.scrollWidth > el.clientWidth"), box
    # The table says that it scrolls, and its cells are wide, not tall: one line each.
    expect(answer.locator(".table-hint")).to_have_text("Scroll sideways to see all 14 columns →")
    expect(answer.locator(".table-hint")).to_be_in_viewport()
    line = answer.locator(".table-wrap td").first.evaluate(
        "(td) => parseFloat(getComputedStyle(td).lineHeight)"
    )
    heights = answer.locator(".table-wrap tbody td").evaluate_all(
        "(cells) => cells.map((td) => td.clientHeight)"
    )
    assert max(heights) < 2 * line + 16 + 1, (heights, line)  # one line plus its padding
    answer.locator(".table-hint").scroll_into_view_if_needed()
    shoot(page, "mobile-table")
    scroll_to_end(page)
    shoot(page, "mobile")

    sidebar = page.locator("#sidebar")
    toggle = page.get_by_role("button", name="Show conversations")
    expect(sidebar).not_to_be_in_viewport()
    toggle.click()
    expect(sidebar).to_be_in_viewport(ratio=1)  # slid all the way in
    expect(page.get_by_role("link", name="New chat")).to_be_focused()
    expect(sidebar.locator("#conversation-list li")).to_have_count(1)
    shoot(page, "mobile-drawer")
    page.keyboard.press("Escape")
    expect(sidebar).not_to_be_in_viewport()
    expect(page.get_by_role("button", name="Show conversations")).to_be_focused()
    page.get_by_role("button", name="Show conversations").click()
    expect(sidebar).to_be_in_viewport()
    page.locator("#scrim").click(position={"x": 360, "y": 400})
    expect(sidebar).not_to_be_in_viewport()
    page.get_by_role("button", name="Show conversations").click()
    sidebar.get_by_role("button", name="Hide conversations").click()
    expect(sidebar).not_to_be_in_viewport()
    assert page.evaluate(fits)


def test_the_dark_theme_follows_the_system_setting(
    open_page: Callable[..., Page],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    colours = "() => [getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color]"  # noqa: E501
    light = open_page(color_scheme="light")
    log_in_as(light, user)
    dark = open_page(color_scheme="dark")
    log_in_as(dark, user)
    (light_bg, light_text), (dark_bg, dark_text) = light.evaluate(colours), dark.evaluate(colours)
    assert light_bg == "rgb(255, 255, 255)" and dark_bg != light_bg
    assert luminance(dark_bg) < 0.05 < 0.8 < luminance(dark_text)
    assert luminance(light_text) < 0.05

    send(dark, "draw a lighthouse at dusk")
    expect(last_answer(dark)).to_have_attribute("data-status", "complete")
    wait_until_image_loaded(dark, last_answer(dark).locator("img"))
    scroll_to_end(dark)
    shoot(dark, "dark")


def luminance(css: str) -> float:
    """Relative luminance (WCAG) of an rgb()/rgba() colour."""
    red, green, blue = (int(part) / 255 for part in css[css.index("(") + 1 : -1].split(",")[:3])

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * linear(red) + 0.7152 * linear(green) + 0.0722 * linear(blue)


def test_the_keyboard_reaches_everything_and_focus_is_always_visible(
    page: Page, log_in: Callable[[str], None], user: str
) -> None:
    log_in(user)
    page.locator("textarea#prompt").fill("hello")
    # Start from the top of the document, as after loading it without the script's focus.
    page.evaluate(
        """() => { document.body.tabIndex = -1; document.body.focus();
                   document.body.removeAttribute("tabindex"); }"""
    )

    reached: list[str] = []
    for _ in range(30):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => {
              const el = document.activeElement;
              const style = getComputedStyle(el);
              const box = el.closest(".composer");
              const ring = box ? getComputedStyle(box).boxShadow : "none";
              return {
                name: el.id || el.getAttribute("aria-label") || el.textContent.trim(),
                visible: (style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0)
                  || ring.includes("0px 0px 0px 3px"),
              };
            }"""
        )
        assert focused["visible"], f"no visible focus on {focused['name']!r}"
        reached.append(focused["name"])
        if focused["name"] == "send":
            break
    assert reached[0] == "Skip to content"
    assert "New chat" in reached and "prompt" in reached and reached[-1] == "send", reached
    assert reached.index("New chat") < reached.index("prompt")

    # The account menu opens and closes from the keyboard.
    summary = page.locator("details.account-menu summary")
    summary.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("link", name="Change password")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("link", name="Change password")).to_be_hidden()
    expect(summary).to_be_focused()
