"""In a real browser: the Content-Security-Policy holds, and another origin cannot ride the cookie.

- Inline script injected into the chat page (as an XSS would) does not run,
  while the page's own modules still do, and a normal turn reports no
  policy violation at all.
- A page served on another port of the app's host, opened in the browser of a
  logged-in user, tries to open the chat socket with that user's cookie: it is
  refused, while the app's own page connects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

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
    hostile.wait_for_function("window.__result !== null")
    result = hostile.evaluate("window.__result")
    assert result["messages"] == [], result  # not even session.ready
    assert result["code"] == 1006, result  # the handshake was refused
    # Nothing was sent in the victim's name.
    page.reload()
    expect(page.locator("#main[data-ready]")).to_have_count(1)
    expect(page.get_by_text("exfiltrate my history")).to_have_count(0)
