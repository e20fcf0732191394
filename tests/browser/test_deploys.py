"""A deploy, as the user sees it: the server drains (SIGTERM), the page's message goes out again.

The server process is this test's own (it is stopped mid-test): SIGTERM while
another tab's answer streams makes it drain; a message sent meanwhile is
refused with `server_draining`, the page keeps it, reconnects, and sends it
again once a new process serves the same address (a restart, as a process
manager does it). The user sees the question and its answer once.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from offline_model import OfflineModelServer, Reply
from tests.browser.conftest import TIMEOUT_MS, PageErrors, log_in_as, wait_until_ready
from tests.browser.helpers import answers, conversation_id, last_answer, send, stored_answers
from tests.servers import REPO, AppServer, http_status, launch, server_env, stop
from tests.waiting import within


@pytest.fixture
def own_server(model: OfflineModelServer, output_dir: Path) -> Iterator[AppServer]:
    tmp = Path(tempfile.mkdtemp(prefix="chatimg-deploy-"))
    server = launch(
        server_env(tmp, model.base_url, CHATIMG_LLM_TITLES="0"), output_dir / "deploy-server.log"
    )
    try:
        yield server
    finally:
        if server.process is not None:
            stop(server.process)
        shutil.rmtree(tmp, ignore_errors=True)


def restart_on_the_same_address(server: AppServer) -> None:
    """What a process manager does after the old process exited: a new one, same port."""
    port = server.url.rsplit(":", 1)[1]
    with server.log_path.open("ab") as log:
        server.process = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=REPO,
            env=server.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    assert within(lambda: http_status(f"{server.url}/login/") == 200, 60), server.log_tail()


def test_a_message_refused_by_a_draining_server_is_sent_again_and_answered_once(
    browser: Browser, own_server: AppServer, model: OfflineModelServer, page_errors: PageErrors
) -> None:
    username = f"dep-{uuid.uuid4().hex[:6]}"
    own_server.create_user(username)
    # The first request: another tab's long answer, which keeps the drain going
    # (about 4 s); the second: the answer to the message sent during the drain.
    model.script_chat(Reply(tokens=[f"long{n} " for n in range(200)], token_delay=0.02))
    model.script_chat(Reply(text="Answered once."))
    context = browser.new_context(base_url=own_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        busy, page = context.new_page(), context.new_page()
        for tab in (busy, page):
            tab.on("pageerror", lambda error: page_errors.errors.append(str(error)))
        log_in_as(busy, username)
        send(busy, "a long one")
        expect(last_answer(busy)).to_have_attribute("data-status", "streaming")
        refusals: list[str] = []
        page.on(
            "websocket",
            lambda socket: socket.on(
                "framereceived",
                lambda payload: (
                    refusals.append(str(payload)) if "server_draining" in str(payload) else None
                ),
            ),
        )
        page.goto("/")  # the same session: the chat page, a new chat
        wait_until_ready(page)

        assert own_server.process is not None
        own_server.process.send_signal(signal.SIGTERM)  # a deploy: the process drains
        # The signal is handled in its own time: a message that got there first
        # would be taken, not refused (a CI failure). The drain says when it starts.
        assert within(lambda: "draining:" in own_server.log_tail(), 10), own_server.log_tail()
        send(page, "sent during the deploy")
        # Refused (nothing stored): the page keeps the message, pending, to send again.
        expect(page.locator("article.msg-user.is-pending")).to_have_count(1)

        # The drain lets the long answer finish, then the process exits.
        expect(last_answer(busy)).to_have_attribute("data-status", "complete", timeout=40_000)
        own_server.process.wait(timeout=40)
        assert refusals, "the draining server never refused the message"
        restart_on_the_same_address(own_server)

        # The page is back, sends the message again, and its answer comes once.
        expect(last_answer(page).locator(".body")).to_have_text("Answered once.", timeout=40_000)
        expect(page.locator("#conn-status")).to_have_text("")
        expect(page.locator("article.msg-user")).to_have_count(1)
        expect(page.locator("article.msg-user").first).to_contain_text("sent during the deploy")
        expect(answers(page)).to_have_count(1)
        [(_, status, text)] = stored_answers(own_server, conversation_id(page))
        assert (status, text) == ("complete", "Answered once.")
    finally:
        context.close()
    assert page_errors.errors == []
