"""A streaming answer is shown as Markdown while it grows, and the final HTML moves nothing.

The page renders the partial text itself (markdown-stream.js: markdown-it + DOMPurify
with the server's allow-list); the server's sanitised HTML replaces it at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from conversations.rendering import markdown_html
from offline_model import OfflineModelServer, Reply, tokenize
from tests.browser.conftest import log_in_as, wait_until_ready
from tests.browser.helpers import last_answer, send
from tests.browser.test_layout import luminance

CODE = "def area(r):\n    pi = 3.14159\n    return pi * r * r\n"
ANSWER = f"""## Circles

The area of a circle, in Python:

```python
{CODE}```

| r | area |
| --- | ---: |
| 1 | 3.14 |
| 2 | 12.57 |

That is all there is to it; the table rounds to two places, and the code
keeps every digit of pi it was given, which is enough for most drawings.
"""

# On every DOM change: the status, what the streaming segment shows, and where the
# blocks are (relative to the answer), to compare the last streaming frame with the end.
RECORD = """() => {
  window.__frames = [];
  const thread = document.getElementById("thread");
  new MutationObserver(() => {
    const all = thread.querySelectorAll("article.msg-assistant");
    const article = all[all.length - 1];
    if (!article) return;
    const top = article.getBoundingClientRect().top;
    const box = (selector) => {
      const el = article.querySelector(selector);
      if (!el) return null;
      const r = el.getBoundingClientRect();
      return [r.top - top, r.left, r.width, r.height];
    };
    const stream = article.querySelector(".md.stream");
    window.__frames.push({
      status: article.dataset.status,
      streamPre: stream?.querySelector("pre code")?.textContent ?? null,
      streamRows: stream ? stream.querySelectorAll("table tr").length : 0,
      streamText: stream?.textContent ?? "",
      boxes: {h2: box(".md h2"), p: box(".md p"), code: box(".md .code-block"),
              table: box(".md .table-wrap"), rows: box(".md tbody")},
    });
  }).observe(thread, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_a_table_and_a_code_block_render_while_streaming_and_the_end_moves_nothing(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    model.script_chat(Reply(tokens=tokenize(ANSWER), token_delay=0.04))
    log_in(user)
    page.evaluate(RECORD)
    send(page, "the area of a circle")
    answer = last_answer(page)
    stream = answer.locator(".md.stream")

    # While the answer is still streaming: a code block, then a table, as elements.
    expect(stream.locator(".code-block pre code")).to_be_visible()
    expect(stream.locator(".table-wrap table tbody tr")).to_have_count(2)
    expect(answer).to_have_attribute("data-status", "streaming")
    expect(stream.locator("th").nth(1)).to_have_text("area")
    shoot(page, "chat-streaming")
    expect(answer).to_have_attribute("data-status", "complete")

    frames: list[dict[str, Any]] = page.evaluate("window.__frames")
    streaming = [f for f in frames if f["status"] == "streaming"]
    # The fence was a code block before it was closed (part of the code, no ``` shown).
    open_fence = [
        f
        for f in streaming
        if f["streamPre"] and CODE.startswith(f["streamPre"]) and f["streamPre"] != CODE
    ]
    assert open_fence, "the code block only appeared once its fence was closed"
    assert not any("```" in f["streamText"] for f in streaming)
    assert any(f["streamRows"] >= 2 for f in streaming)

    # The swap to the server's HTML moved nothing that was already on screen.
    last = streaming[-1]["boxes"]
    end = next(f for f in frames if f["status"] == "complete")["boxes"]
    for name in ("h2", "p", "code", "table", "rows"):
        assert last[name] is not None and end[name] is not None, name
        moved = [abs(a - b) for a, b in zip(last[name], end[name], strict=True)]
        assert max(moved) <= 1, f"{name} moved at the end: {last[name]} -> {end[name]}"
    # Highlighted at the end (the server's Pygments spans), same box.
    expect(answer.locator(".code-block pre code span.k").first).to_have_text("def")


def test_a_reload_while_streaming_shows_the_text_so_far_as_markdown(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
) -> None:
    model.script_chat(Reply(tokens=tokenize(ANSWER), token_delay=0.15))
    log_in(user)
    send(page, "the area of a circle")
    expect(last_answer(page).locator(".md.stream h2")).to_have_text("Circles")
    page.reload()
    wait_until_ready(page)
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-status", "streaming")
    expect(answer.locator(".md.stream h2")).to_have_text("Circles")
    expect(answer.locator(".md.stream")).not_to_contain_text("##")
    expect(answer).to_have_attribute("data-status", "complete", timeout=60_000)
    expect(answer.locator(".md table tbody tr")).to_have_count(2)


# Markdown that exercises the renderer's corners; the page's render of each must be
# the same DOM as the server's HTML (Pygments' spans aside).
CORPUS = [
    ANSWER,
    "# One\n\nSetext\n===\n\nand\n---\n",
    "- a\n- b\n  - nested *em*\n\n1) x\n2) y\n\n3. start at three\n",
    "> quote\n> > nested\n\nlazy\ncontinuation\n",
    "```\nno language <b>\n```\n\n    indented code\n\n```js\nunclosed fence",
    "| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |\n| only one |\n",
    "[ok](https://example.com 'title') [rel](/c/1/) [mail](mailto:a@b.c)"
    " [bad](javascript:alert(1)) [data](data:text/html,x) <https://auto.example/>",
    "![img](https://evil.example/x.png) *a **b** c* ~~del~~ `code` \\*literal\\*",
    "<script>alert(1)</script>\n\n<div onclick=x>raw</div> <b>inline</b> &amp; &copy; &#x41;",
    "line  \nhard break\\\nand another\n\n***\n\n[ref]\n\n[ref]: https://ref.example/ 'T'\n",
    "| head |\n| --- |\n| `a|b` | extra |\n\npara with trailing spaces   ",
]

NORMALISE = """(root) => {
  // Elements with sorted attributes and text, spans unwrapped (highlighting only).
  const walk = (node) => {
    if (node.nodeType === Node.TEXT_NODE) return node.data;
    if (node.nodeType !== Node.ELEMENT_NODE) return "";
    const inner = [...node.childNodes].map(walk).join("");
    if (node.localName === "span") return inner;
    const attrs = [...node.attributes].map((a) => `${a.name}=${JSON.stringify(a.value)}`).sort();
    const open = attrs.length ? `${node.localName} ${attrs.join(" ")}` : node.localName;
    return `<${open}>${inner}</${node.localName}>`;
  };
  return [...root.childNodes].map(walk).join("").replace(/\\n+/g, "\\n").trim();
}"""


def test_the_page_renders_markdown_exactly_as_the_server_does(
    page: Page, log_in: Callable[[str], None], user: str
) -> None:
    log_in(user)
    server = [markdown_html(text) for text in CORPUS]
    pairs = page.evaluate(
        f"""async ([texts, serverHtml]) => {{
          const m = await import("/static/conversations/markdown-stream.js");
          const normalise = {NORMALISE};
          return texts.map((text, i) => {{
            const mine = document.createElement("div");
            mine.append(m.render(text));
            const theirs = document.createElement("template");
            theirs.innerHTML = serverHtml[i];
            return [normalise(mine), normalise(theirs.content)];
          }});
        }}""",
        [CORPUS, server],
    )
    for text, (mine, theirs) in zip(CORPUS, pairs, strict=True):
        assert mine == theirs, f"the page and the server differ on {text!r}"


def test_code_is_highlighted_in_the_light_and_the_dark_theme(
    open_page: Callable[..., Page],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    colours = {}
    for scheme in ("light", "dark"):
        model.script_chat(Reply(tokens=tokenize(ANSWER)))
        page = open_page(color_scheme=scheme)
        log_in_as(page, user)
        send(page, f"the area of a circle, {scheme}")
        answer = last_answer(page)
        expect(answer).to_have_attribute("data-status", "complete")
        keyword = answer.locator(".code-block span.k").first
        expect(keyword).to_have_text("def")
        colours[scheme] = (
            keyword.evaluate("(el) => getComputedStyle(el).color"),
            answer.locator(".code-block pre").evaluate(
                "(el) => getComputedStyle(el).backgroundColor"
            ),
            answer.locator(".code-block span.n").first.evaluate(
                "(el) => getComputedStyle(el).color"
            ),
        )
        answer.locator(".code-block").scroll_into_view_if_needed()
        shoot(page, f"code-{scheme}")
    (light_kw, light_bg, light_plain), (dark_kw, dark_bg, dark_plain) = (
        colours["light"],
        colours["dark"],
    )
    assert light_kw == "rgb(0, 128, 0)"  # Pygments' "default": keywords green
    assert dark_kw != light_kw and light_bg != dark_bg
    # Readable on its own background in both: keywords and plain names alike.
    for fg, bg in ((light_kw, light_bg), (light_plain, light_bg)):
        assert contrast(fg, bg) >= 4.5, (fg, bg)
    for fg, bg in ((dark_kw, dark_bg), (dark_plain, dark_bg)):
        assert contrast(fg, bg) >= 4.5, (fg, bg)


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two rgb()/rgba() colours (alpha ignored)."""
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)
