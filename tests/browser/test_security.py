"""In a real browser: the Content-Security-Policy holds, another origin cannot ride the
cookie, and a hostile answer never runs anything.

- Inline script injected into the chat page (as an XSS would) does not run,
  while the page's own modules still do, and a normal turn reports no
  policy violation at all.
- A page served on another port of the app's host, opened in the browser of a
  logged-in user, tries to open the chat socket with that user's cookie: it is
  refused, while the app's own page connects.
- An answer full of script, handlers, javascript: links and raw HTML streams in
  rendered as Markdown: nothing of it enters the DOM as a live element, during
  streaming or after, and the page's own sanitiser keeps only the server's
  allow-list.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from conversations.rendering import client_policy
from offline_model import OfflineModelServer, Reply, tokenize
from tests.browser.conftest import log_in_as
from tests.browser.helpers import last_answer, send
from tests.servers import AppServer

# Recorded from the first script on, before any of the page's own.
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(event.violatedDirective + " " + (event.blockedURI || "inline"));
});
"""

INJECTED = (
    "<script>window.__pwned = 'inline script ran';</script>"
    "<img src=x onerror=\"window.__pwned2 = 'handler ran'\">"
)


def test_a_normal_turn_breaks_no_rule_of_the_policy(page: Page, user: str) -> None:
    page.add_init_script(WATCH_VIOLATIONS)
    log_in_as(page, user)
    send(page, "hello")
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    page.goto("/tokens/")
    page.goto("/")
    assert page.evaluate("window.__violations") == []


def test_an_injected_inline_script_does_not_run(
    page: Page, user: str, app_server: AppServer
) -> None:
    log_in_as(page, user)
    page.add_init_script(WATCH_VIOLATIONS)

    def inject(route: Route) -> None:
        response = route.fetch()
        body = response.text().replace("</body>", INJECTED + "</body>", 1)
        assert INJECTED in body
        route.fulfill(response=response, body=body)

    page.route(app_server.url + "/", inject)  # the chat page itself, headers as they were
    page.goto("/")
    expect(page.locator("#main[data-ready]")).to_have_count(1)  # our own modules ran
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("window.__pwned2") is None
    violations = page.evaluate("window.__violations")
    assert any(v.startswith("script-src") for v in violations), violations
    # The page still works, served as it is. (Chromium treats a document that
    # Playwright fulfilled as public, and refuses its socket to loopback.)
    page.unroute(app_server.url + "/")
    page.goto("/")
    expect(page.locator("#main[data-ready]")).to_have_count(1)
    send(page, "still fine?")
    expect(last_answer(page)).to_have_attribute("data-status", "complete")


# --- a hostile page on another port of the same host -------------------------------------

ATTACKER_PAGE = """<!doctype html><title>free prizes</title>
<script>
window.__result = null;
const socket = new WebSocket("ws://127.0.0.1:%(port)s/ws/chat/");
const seen = [];
socket.onmessage = (event) => seen.push(event.data);
socket.onopen = () => socket.send(JSON.stringify({type: "message.send",
  client_message_id: "stolen", text: "exfiltrate my history"}));
socket.onclose = (event) => { window.__result = {code: event.code, messages: seen}; };
</script>"""


@pytest.fixture
def attacker(app_server: AppServer) -> Iterator[str]:
    port = app_server.url.rsplit(":", 1)[1]
    body = (ATTACKER_PAGE % {"port": port}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_page_on_another_port_cannot_open_the_socket_with_the_cookie(
    open_page: Callable[..., Page], user: str, attacker: str
) -> None:
    page = open_page()
    log_in_as(page, user)  # the victim's own page connects (data-ready)
    hostile = page.context.new_page()
    hostile.goto(attacker)
    hostile.wait_for_function("() => window.__result !== null")  # a function: no eval per poll
    result = hostile.evaluate("window.__result")
    assert result["messages"] == [], result  # not even session.ready
    assert result["code"] == 1006, result  # the handshake was refused
    # Nothing was sent in the victim's name.
    page.reload()
    expect(page.locator("#main[data-ready]")).to_have_count(1)
    expect(page.get_by_text("exfiltrate my history")).to_have_count(0)


# --- hostile Markdown in a streamed answer ------------------------------------------------

HOSTILE = """# Totally normal answer

<script>window.__pwned = "script ran"</script>

<img src=x onerror="window.__pwned = 'img handler ran'">

Click [here](javascript:window.__pwned='link') or [there](JAVASCRIPT:alert(1)) or
[data](data:text/html,<script>alert(1)</script>) or <javascript:alert(1)>.

<a href="javascript:window.__pwned='raw link'">raw link</a> <b onmouseover="x()">bold?</b>
<iframe src="https://evil.example/"></iframe><svg onload="window.__pwned='svg'"></svg>
<style>body { display: none }</style>

| cell | <img src=y onerror="window.__pwned='in a table'"> |
| --- | --- |
| <script>window.__pwned='cell'</script> | [x](javascript:void(0)) |

```html
<script>window.__pwned = "in code"</script>
```

![pixel](https://evil.example/track.png)
"""

# Every element that ever enters the thread, from before the answer starts.
WATCH_ELEMENTS = """() => {
  window.__added = [];
  const note = (el) => {
    const attrs = [...el.attributes].map((a) => [a.name, a.value]);
    window.__added.push({tag: el.localName, attrs});
  };
  new MutationObserver((records) => {
    for (const record of records) {
      for (const node of record.addedNodes) {
        if (node.nodeType !== Node.ELEMENT_NODE) continue;
        note(node);
        node.querySelectorAll("*").forEach(note);
      }
      if (record.type === "attributes") note(record.target);
    }
  }).observe(document.getElementById("thread"),
             {subtree: true, childList: true, attributes: true});
}"""

LIVE_TAGS = {"script", "img", "iframe", "svg", "style", "object", "embed", "math", "link", "meta"}


def own_icon(element: dict[str, Any]) -> bool:
    """The page's own icons: <svg class="icon"><use href="#i-…"></svg> from its sprite."""
    attrs = dict(element["attrs"])
    if element["tag"] == "svg":
        return attrs.get("class") == "icon" and not any(n.startswith("on") for n in attrs)
    return element["tag"] == "use" and attrs.get("href", "").startswith("#i-")


def assert_inert(elements: list[dict[str, Any]], *, when: str) -> None:
    for element in elements:
        if own_icon(element):
            continue
        assert element["tag"] not in LIVE_TAGS | {"use"}, (
            f"{when}: a <{element['tag']}> entered the DOM"
        )
        for name, value in element["attrs"]:
            assert not name.startswith("on"), f"{when}: a handler {name}={value!r}"
            if name in {"href", "src", "action", "formaction"}:
                assert not value.strip().lower().startswith(("javascript:", "data:")), (
                    f"{when}: {name}={value!r}"
                )


def test_a_hostile_streamed_answer_never_runs_anything_nor_enters_the_dom_live(
    page: Page, user: str, model: OfflineModelServer
) -> None:
    model.script_chat(Reply(tokens=tokenize(HOSTILE), token_delay=0.01))
    page.add_init_script(WATCH_VIOLATIONS)
    log_in_as(page, user)
    page.evaluate(WATCH_ELEMENTS)
    send(page, "say something nasty")
    answer = last_answer(page)
    # While it streams: rendered (a heading), the raw HTML shown as text.
    expect(answer.locator(".md.stream h1")).to_have_text("Totally normal answer")
    expect(answer.locator(".md.stream")).to_contain_text("<script>")
    assert_inert(page.evaluate("window.__added"), when="while streaming")
    expect(answer).to_have_attribute("data-status", "complete")
    assert_inert(page.evaluate("window.__added"), when="at the end")
    body = answer.locator(".body")
    expect(body.locator("table")).to_have_count(1)
    expect(body).to_contain_text('<img src=x onerror="window.__pwned')  # as text
    for selector in ("script", "img", "iframe", "svg:not(.icon)", "style", "[onerror]", "[onload]"):
        expect(page.locator(f"#thread {selector}")).to_have_count(0)
    expect(page.locator('#thread a[href^="javascript:" i]')).to_have_count(0)
    expect(page.locator('#thread a[href^="data:" i]')).to_have_count(0)
    assert page.evaluate("window.__pwned") is None
    # Nothing even tried: no blocked script, image or frame.
    assert page.evaluate("window.__violations") == []

    # The same after a reload (the server's HTML only).
    page.reload()
    expect(page.locator("#main[data-ready]")).to_have_count(1)
    for selector in ("script", "img", "iframe", "svg:not(.icon)", "style", "[onerror]"):
        expect(page.locator(f"#thread {selector}")).to_have_count(0)
    expect(page.locator('#thread a[href^="javascript:" i]')).to_have_count(0)
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("window.__violations") == []


RAW_HTML = [
    '<img src=x onerror="window.__pwned=1">',
    '<a href="javascript:window.__pwned=1">x</a>',
    '<a href=" jAvAsCrIpT:window.__pwned=1">x</a>',
    '<a href="data:text/html,<script>alert(1)</script>">x</a>',
    "<svg><script>window.__pwned=1</script></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=window.__pwned=1>",
    '<p style="background:url(x)" onclick="x()" id="i" class="c">p</p>',
    '<span class="k evil" onclick="x()">kept span, one class</span>',
    '<code class="language-js" data-x="1">code</code>',
    "<iframe srcdoc='<script>parent.__pwned=1</script>'></iframe><object data=x></object>",
    "<form action='javascript:x()'><input autofocus onfocus=x()></form>",
    '<a href="https://ok.example/" target="_self" rel="opener">ok</a>',
]


def test_the_pages_sanitiser_keeps_only_the_servers_allow_list(page: Page, user: str) -> None:
    # Defence in depth: raw HTML never reaches it (the Markdown renderer escapes it), but
    # were it to, the page's DOMPurify keeps what the server's nh3 keeps, and no more.
    log_in_as(page, user)
    policy = client_policy()
    elements = page.evaluate(
        """async (inputs) => {
          const m = await import("/static/conversations/markdown-stream.js");
          return inputs.map((html) => {
            const box = document.createElement("div");
            box.append(m.sanitize(html));
            return [...box.querySelectorAll("*")].map((el) => ({
              tag: el.localName,
              attrs: [...el.attributes].map((a) => [a.name, a.value]),
            }));
          });
        }""",
        RAW_HTML,
    )
    assert page.evaluate("window.__pwned") is None
    for html, found in zip(RAW_HTML, elements, strict=True):
        assert_inert(found, when=html)
        for element in found:
            assert element["tag"] in policy["tags"], (html, element)
            for name, value in element["attrs"]:
                allowed = set(policy["attributes"].get(element["tag"], []))
                if element["tag"] == "a":
                    allowed |= {"rel", "target"}
                if name == "class" and element["tag"] in policy["classes"]:
                    assert set(value.split()) <= set(policy["classes"][element["tag"]])
                    continue
                assert name in allowed, (html, element)
            if element["tag"] == "a":
                attrs = dict(element["attrs"])
                assert attrs["rel"] == policy["link_rel"] and attrs["target"] == "_blank"
    assert elements[7] == [{"tag": "span", "attrs": [["class", "k"]]}]
    assert elements[8] == [{"tag": "code", "attrs": [["class", "language-js"]]}]
