"""Every state of a turn, driven from the page: stop, reconnect and resume, regenerate, retry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from offline_model import Fail, OfflineModelServer, Reply
from tests.browser.conftest import log_in_as, wait_until_ready
from tests.browser.helpers import (
    RECORD_STREAM,
    answers,
    conversation_id,
    last_answer,
    send,
    stored_answers,
    streaming_requests,
)
from tests.servers import AppServer

# Distinct words, so that a duplicated or missing piece shows in the final text; with
# emoji, whose length differs between Python and JavaScript (offsets are code points).
TOKENS = [f"word{n:02d}{'🙂' if n % 5 == 0 else ''} " for n in range(40)]
FULL_TEXT = "".join(TOKENS).strip()


def streamed_text(page: Page) -> str:
    return str(
        last_answer(page).evaluate(
            "(a) => [...a.querySelectorAll('.md.stream')].map((n) => n.textContent).join('')"
        )
    )


def wait_for_streamed_text(page: Page, at_least: int) -> None:
    page.wait_for_function(
        """(n) => {
          const all = document.querySelectorAll("article.msg-assistant");
          const a = all[all.length - 1];
          return a && a.dataset.status === "streaming"
            && [...a.querySelectorAll(".md.stream")].map((x) => x.textContent).join("").length >= n;
        }""",
        arg=at_least,
    )


def test_stop_keeps_the_partial_answer_and_it_survives_a_reload(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    app_server: AppServer,
) -> None:
    model.script_chat(Reply(tokens=TOKENS, token_delay=0.1))
    log_in(user)
    send(page, "count slowly")
    wait_for_streamed_text(page, 20)
    expect(page.locator("#send")).to_be_hidden()

    page.get_by_role("button", name="Stop answering").click()

    answer = last_answer(page)
    expect(answer).to_have_attribute("data-status", "cancelled")
    expect(answer.locator(".msg-note")).to_have_text("Stopped")
    kept = answer.locator(".body").inner_text().strip()
    assert 20 <= len(kept) < len(FULL_TEXT) and FULL_TEXT.startswith(kept)
    expect(page.locator("#stop")).to_be_hidden()
    expect(answer.get_by_role("button", name="Regenerate answer")).to_be_visible()
    [(_, status, text)] = stored_answers(app_server, conversation_id(page))
    assert (status, text.strip()) == ("cancelled", kept)

    page.reload()
    wait_until_ready(page)
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-status", "cancelled")
    expect(answer.locator(".msg-note")).to_have_text("Stopped")
    expect(answer.locator(".body")).to_have_text(kept)


def test_a_dropped_socket_reconnects_and_the_answer_completes_with_exactly_its_text(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    app_server: AppServer,
    shoot: Callable[[Page, str], None],
) -> None:
    model.script_chat(Reply(tokens=TOKENS, token_delay=0.06))
    log_in(user)
    page.evaluate(RECORD_STREAM)
    send(page, "count for me")
    wait_for_streamed_text(page, 40)

    page.evaluate("window.chatimg.socket.close()")

    # The drop is shown, then goes away once the page is back and caught up.
    expect(page.locator("#conn-status")).to_contain_text("Reconnecting")
    shoot(page, "chat-reconnecting")
    expect(page.locator("#conn-status")).to_have_text("")
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".body")).to_have_text(FULL_TEXT)
    # Never a duplicated or a missing piece on the way, either (the page shows the
    # text rendered as Markdown: words compared, not the spaces between them).
    samples: list[dict[str, Any]] = page.evaluate("window.__stream")
    for sample in samples:
        assert " ".join(FULL_TEXT.split()).startswith(" ".join(sample["text"].split())), sample
    assert len(streaming_requests(model)) == 1
    [(_, status, text)] = stored_answers(app_server, conversation_id(page))
    assert (status, text) == ("complete", "".join(TOKENS))


def test_a_message_sent_while_the_socket_is_down_goes_out_once_it_is_back(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    app_server: AppServer,
) -> None:
    model.script_chat(Reply(text="Got it, once."))
    log_in(user)
    page.locator("textarea#prompt").fill("are you there?")
    # Drop the socket and send in the same task: the frame cannot go out now.
    page.evaluate(
        """() => {
          window.chatimg.socket.close();
          document.getElementById("composer").requestSubmit();
        }"""
    )
    expect(page.locator("article.msg-user.is-pending")).to_have_count(1)

    expect(last_answer(page).locator(".body")).to_have_text("Got it, once.")
    expect(page.locator("article.msg-user:not(.is-pending)")).to_have_count(1)
    assert len(streaming_requests(model)) == 1
    assert len(stored_answers(app_server, conversation_id(page))) == 1


def test_regenerate_replaces_the_answer_in_every_open_tab(
    page: Page,
    open_page: Callable[..., Page],
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
) -> None:
    model.script_chat(
        Reply(text="The first answer."), Reply(text="A better answer.", token_delay=0.05)
    )
    log_in(user)
    send(page, "say something")
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    expect(last_answer(page).locator(".body")).to_have_text("The first answer.")
    first_id = last_answer(page).get_attribute("data-message-id")
    other = open_page()
    log_in_as(other, user)
    other.goto(page.url)
    wait_until_ready(other)
    expect(answers(other)).to_have_count(1)

    last_answer(page).get_by_role("button", name="Regenerate answer").click()

    for tab in (page, other):
        expect(answers(tab)).to_have_count(1)
        expect(answers(tab).locator(".body")).to_have_text("A better answer.")
        expect(answers(tab)).to_have_attribute("data-status", "complete")
        expect(answers(tab)).not_to_have_attribute("data-message-id", first_id or "")
    # The same question went to the model twice.
    first, second = streaming_requests(model)
    assert first["messages"] == second["messages"]


def test_a_failed_answer_explains_itself_and_retry_brings_an_answer(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    shoot: Callable[[Page, str], None],
) -> None:
    model.script_chat(Fail(500), Reply(text="Here it is after all."))
    log_in(user)
    send(page, "tell me a story")

    answer = last_answer(page)
    expect(answer).to_have_attribute("data-status", "failed")
    error = answer.locator(".msg-error")
    expect(error.locator(".msg-error-title")).to_have_text("The model answered with an error.")
    expect(error.locator(".msg-error-detail")).to_contain_text("500")
    shoot(page, "chat-error")
    # The error is typed for screen readers too, once.
    expect(page.locator("#announcer")).to_contain_text("The answer failed.")

    error.get_by_role("button", name="Retry").click()

    expect(answers(page)).to_have_count(1)
    expect(last_answer(page)).to_have_attribute("data-status", "complete")
    expect(last_answer(page).locator(".body")).to_have_text("Here it is after all.")
    expect(page.locator(".msg-error")).to_have_count(0)


def test_a_busy_model_is_explained_in_plain_words(
    page: Page, log_in: Callable[[str], None], user: str, model: OfflineModelServer
) -> None:
    model.script_chat(Fail(429, code="rate_limit_exceeded", type="requests"))
    log_in(user)
    send(page, "hello")
    error = last_answer(page).locator(".msg-error")
    expect(error.locator(".msg-error-title")).to_have_text(
        "The model is getting too many requests right now."
    )
    expect(error.get_by_role("button", name="Retry")).to_be_visible()


def test_a_refused_message_goes_back_into_the_box_with_the_reason(
    page: Page, log_in: Callable[[str], None], user: str, model: OfflineModelServer
) -> None:
    log_in(user)
    # A function, not an expression: Playwright evals an expression again at each poll,
    # which the page's CSP refuses (no 'unsafe-eval') whenever the first check fails.
    page.wait_for_function("() => window.chatimg.socket.readyState === WebSocket.OPEN")
    # Use up this socket's frame allowance (CHATIMG_FRAMES_PER_10S, 200) with pings.
    page.evaluate(
        """() => { for (let i = 0; i < 200; i++)
          window.chatimg.socket.send(JSON.stringify({type: "ping", id: i})); }"""
    )
    send(page, "a message the server refuses")

    alert = page.locator("#composer-error")
    expect(alert).to_contain_text("You are sending messages too quickly.")
    expect(alert).to_contain_text("slow down")
    expect(page.locator("textarea#prompt")).to_have_value("a message the server refuses")
    expect(page.locator("article.msg-user")).to_have_count(0)
    assert streaming_requests(model) == []
    page.get_by_role("button", name="Dismiss").click()
    expect(alert).to_be_hidden()


def test_an_answer_cut_at_its_length_limit_offers_continue_and_carries_on_in_place(
    page: Page,
    log_in: Callable[[str], None],
    user: str,
    model: OfflineModelServer,
    app_server: AppServer,
    shoot: Callable[[Page, str], None],
) -> None:
    model.script_chat(
        Reply(tokens=["The ", "lighthouse ", "stood "], finish_reason="length"),
        Reply(tokens=["on ", "the ", "cliff."]),
    )
    log_in(user)
    send(page, "describe a lighthouse")
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".msg-truncated")).to_contain_text("length limit")
    page.reload()  # the page as rendered by the server offers it too
    wait_until_ready(page)
    answer = last_answer(page)
    continue_button = answer.get_by_role("button", name="Continue")
    expect(continue_button).to_be_visible()
    shoot(page, "chat-truncated")

    continue_button.click()

    expect(answer.locator(".body")).to_have_text("The lighthouse stood on the cliff.")
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".msg-truncated")).to_have_count(0)
    expect(page.locator("#send")).to_be_visible()
    [(_, status, text)] = stored_answers(app_server, conversation_id(page))
    assert (status, text) == ("complete", "The lighthouse stood on the cliff.")
