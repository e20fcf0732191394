"""Account pages, in the same look: sign up, log in, log out, change password, API tokens."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.browser.conftest import PASSWORD, log_in_as


def test_an_anonymous_visitor_is_sent_to_the_login_page(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    expect(page.get_by_role("heading", name="Welcome back")).to_be_visible()
    expect(page.locator("#id_username")).to_be_focused()
    expect(page.locator("textarea#prompt")).to_have_count(0)


def test_signing_up_lands_on_the_chat_page_logged_in(
    page: Page, shoot: Callable[[Page, str], None]
) -> None:
    username = f"new-{uuid.uuid4().hex[:8]}"
    page.goto("/signup/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password1").fill(PASSWORD)
    page.locator("#id_password2").fill("something else entirely")
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator(".form-error")).to_contain_text("match")
    page.locator("#id_password1").fill(PASSWORD)
    page.locator("#id_password2").fill(PASSWORD)
    shoot(page, "signup")
    page.get_by_role("button", name="Sign up").click()

    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator(".account-menu .who")).to_have_text(username)
    expect(page.locator("#chat-title")).to_have_text("New chat")
    expect(page.locator("textarea#prompt")).to_be_editable()
    expect(page.locator("#conn-status")).to_have_text("")
    # The session is real: a new visit to the login page goes straight back to the chat.
    page.goto("/login/")
    expect(page).to_have_url(re.compile(r"/$"))


def test_changing_the_password_from_the_account_menu(
    page: Page, user: str, shoot: Callable[..., None]
) -> None:
    log_in_as(page, user)
    page.get_by_role("group").locator("summary").click()
    page.get_by_role("link", name="Change password").click()
    expect(page.get_by_role("heading", name="Change password")).to_be_visible()

    page.get_by_label("Old password").fill("not my password")
    page.get_by_label("New password", exact=True).fill("a-new-pass-phrase-42")
    page.get_by_label("New password confirmation").fill("a-new-pass-phrase-42")
    page.get_by_role("button", name="Change password").click()
    expect(page.locator(".form-error")).to_contain_text("old password was entered incorrectly")
    shoot(page, "account-password", docs=False)

    page.get_by_label("Old password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill("a-new-pass-phrase-42")
    page.get_by_label("New password confirmation").fill("a-new-pass-phrase-42")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("heading", name="Password changed")).to_be_visible()

    # Log out from the menu; the old password no longer works, the new one does.
    page.locator("details.account-menu summary").click()
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login/$"))
    page.locator("#id_username").fill(user)
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".form-error")).to_be_visible()
    log_in_as(page, user, "a-new-pass-phrase-42")


def test_api_tokens_are_created_on_their_page_and_shown_once(
    page: Page, user: str, shoot: Callable[..., None]
) -> None:
    log_in_as(page, user)
    page.locator("details.account-menu summary").click()
    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("laptop CLI")
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_label("New API token")).to_have_value(re.compile(r"^cit_"))
    expect(page.get_by_role("cell", name="laptop CLI")).to_be_visible()
    raw = page.get_by_label("New API token").input_value()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == raw
    shoot(page, "account-tokens", docs=False)
    page.reload()  # the creation was a POST, then a redirect: a reload creates nothing
    expect(page.get_by_role("cell", name="laptop CLI")).to_have_count(1)
    page.goto("/tokens/")
    expect(page.get_by_role("cell", name="laptop CLI")).to_be_visible()
    expect(page.get_by_label("New API token")).to_have_count(0)


def test_a_conversation_that_is_not_yours_is_the_apps_own_not_found_page(
    page: Page, user: str, shoot: Callable[..., None]
) -> None:
    log_in_as(page, user)
    response = page.goto(f"/c/{uuid.uuid4()}/")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.get_by_text("not yours to see")).to_be_visible()
    expect(page.get_by_text("Traceback")).to_have_count(0)  # not Django's debug page
    shoot(page, "not-found")
