"""The HTTP side that the battery found wanting, against daphne with DJANGO_DEBUG=0.

A Content-Security-Policy on every page, login throttling, the token page's
post/redirect/get, and error pages in the app's look (in development too).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx2
import pytest

from offline_model import OfflineModelServer
from tests.attack import Visitor, normal_turn, ready_socket, serve
from tests.servers import PASSWORD, AppServer


@pytest.fixture(scope="module")
def model() -> Iterator[OfflineModelServer]:
    with OfflineModelServer(token_delay=0.0) as server:
        yield server


@pytest.fixture(scope="module")
def app(model: OfflineModelServer) -> Iterator[AppServer]:
    yield from serve(model, DJANGO_DEBUG="0")


@pytest.fixture(scope="module")
def dev_app(model: OfflineModelServer) -> Iterator[AppServer]:
    yield from serve(model, DJANGO_DEBUG="1")


def new_user(app: AppServer) -> str:
    name = f"h{uuid.uuid4().hex[:10]}"
    app.create_user(name)
    return name


def policy(response: httpx2.Response) -> dict[str, list[str]]:
    header = response.headers.get("content-security-policy", "")
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


@pytest.mark.parametrize("path", ["/login/", "/signup/", "/", "/tokens/", "/admin/login/", "/c/x"])
def test_every_page_has_a_policy_that_runs_no_inline_script(app: AppServer, path: str) -> None:
    visitor = Visitor(app)
    visitor.login(new_user(app))
    response = visitor.http.get(path)
    csp = policy(response)
    assert csp.get("script-src") == ["'self'"], response.headers
    assert csp.get("object-src") == ["'none'"] and csp.get("base-uri") == ["'none'"]
    assert csp.get("frame-ancestors") == ["'none'"]
    # And our own pages carry no inline script or handler that the policy would block.
    if response.headers.get("content-type", "").startswith("text/html") and path != "/admin/login/":
        scripts = re.findall(r"<script\b([^>]*)>", response.text)
        assert all("src=" in attrs or "application/json" in attrs for attrs in scripts), scripts
        assert not re.search(r"\son[a-z]+=", response.text)


def test_wrong_passwords_lock_that_login_out_even_for_the_right_one(app: AppServer) -> None:
    victim, bystander = new_user(app), new_user(app)
    attacker = Visitor(app)
    statuses = [attacker.login(victim, f"guess-{n}").status_code for n in range(25)]
    assert statuses[0] == 200  # the form again, with its error
    assert 429 in statuses
    # Now even the right password is refused from there, with the app's page.
    locked = attacker.login(victim, PASSWORD)
    assert locked.status_code == 429 and "Too many attempts" in locked.text
    assert "sessionid" not in attacker.http.cookies
    # Another account from the same address is not affected.
    assert Visitor(app).login(bystander).status_code == 302


def test_a_few_mistakes_then_the_right_password_still_logs_in(app: AppServer) -> None:
    name = new_user(app)
    visitor = Visitor(app)
    for n in range(3):
        assert visitor.login(name, f"typo-{n}").status_code == 200
    assert visitor.login(name).status_code == 302


async def test_the_token_page_redirects_after_post_and_shows_the_token_once(
    app: AppServer,
) -> None:
    visitor = Visitor(app)
    visitor.login(new_user(app))
    visitor.csrf("/tokens/")
    created = visitor.post("/tokens/", {"name": "laptop"})
    assert created.status_code == 302 and created.headers["location"] == "/tokens/"
    shown = visitor.http.get("/tokens/")
    raw = re.search(r'value="(cit_[^"]+)"', shown.text)
    assert raw and 'id="copy-token"' in shown.text
    assert "no-store" in shown.headers.get("cache-control", "")
    # A reload shows the list only, and there is still one token.
    again = visitor.http.get("/tokens/")
    assert "cit_" not in again.text.replace(raw.group(1)[:8], "")
    assert len(visitor.token_ids()) == 1
    # The token works.
    program = await ready_socket(app, token=raw.group(1), origin=None)
    await normal_turn(program)
    await program.close()


def test_a_token_cookie_of_another_user_is_not_shown(app: AppServer) -> None:
    alice, bob = Visitor(app), Visitor(app)
    alice.login(new_user(app))
    bob.login(new_user(app))
    alice.csrf("/tokens/")
    alice.post("/tokens/", {"name": "mine"})
    stolen = alice.http.cookies.get("chatimg_new_token", path="/tokens/")
    assert stolen
    bob.http.cookies.set("chatimg_new_token", stolen, path="/tokens/")
    assert "cit_" not in bob.http.get("/tokens/").text


@pytest.mark.parametrize("server", ["app", "dev_app"])
def test_another_users_conversation_is_the_apps_own_404(
    server: str, request: pytest.FixtureRequest
) -> None:
    app: AppServer = request.getfixturevalue(server)
    owner, other = Visitor(app), Visitor(app)
    owner.login(new_user(app))
    other.login(new_user(app))
    conversation = str(uuid.uuid4())
    response = other.http.get(f"/c/{conversation}/")
    assert response.status_code == 404
    assert "Not found" in response.text and "conversations/base.css" in response.text
    assert "URLconf" not in response.text and "Django" not in response.text


def test_error_pages_are_in_the_apps_look(app: AppServer) -> None:
    visitor = Visitor(app)
    missing = visitor.http.get("/no/such/page/")
    assert missing.status_code == 404 and "Not found" in missing.text
    assert "conversations/base.css" in missing.text
    forged = httpx2.post(f"{app.url}/login/", data={"username": "x", "password": "y"})
    assert forged.status_code == 403 and "This page has expired" in forged.text
    assert "conversations/base.css" in forged.text
