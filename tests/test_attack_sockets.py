"""Attacks on the socket side, against the app served by daphne with DJANGO_DEBUG=0.

Open sockets must not outlive access (logout, password change elsewhere, an
account made inactive in the admin, a revoked token, an expired session), a
page on another port or scheme of the app's host must not open the socket with
the victim's cookie, and no frame may crash the socket. After each attack a
normal turn still works.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
import websockets

from offline_model import OfflineModelServer, Reply
from tests.attack import (
    Visitor,
    assert_closed_for_login,
    normal_turn,
    open_socket,
    ready_socket,
    serve,
)
from tests.servers import PASSWORD, AppServer


@pytest.fixture(scope="module")
def model() -> Iterator[OfflineModelServer]:
    with OfflineModelServer(token_delay=0.001) as server:
        yield server


@pytest.fixture(scope="module")
def app(model: OfflineModelServer) -> Iterator[AppServer]:
    """Periodic re-checks far apart (60 s): a close within seconds came from an event."""
    yield from serve(model, CHATIMG_ACCESS_RECHECK_SECONDS="60")


@pytest.fixture(scope="module")
def quick_recheck_app(model: OfflineModelServer) -> Iterator[AppServer]:
    yield from serve(model, CHATIMG_ACCESS_RECHECK_SECONDS="0.5")


@pytest.fixture
def user(app: AppServer) -> str:
    name = f"u{uuid.uuid4().hex[:10]}"
    app.create_user(name)
    return name


def logged_in(app: AppServer, username: str) -> Visitor:
    visitor = Visitor(app)
    response = visitor.login(username)
    assert response.status_code == 302, response.text[:500]
    assert visitor.session
    return visitor


async def assert_works_again(app: AppServer, username: str) -> None:
    visitor = logged_in(app, username)
    sock = await ready_socket(app, session=visitor.session)
    await normal_turn(sock)
    await sock.close()


# --- 1. sockets that outlive access ---------------------------------------------------


async def test_a_logout_closes_the_sockets_of_that_session_only(app: AppServer, user: str) -> None:
    here, elsewhere = logged_in(app, user), logged_in(app, user)
    doomed = await ready_socket(app, session=here.session)
    survivor = await ready_socket(app, session=elsewhere.session)
    assert here.post("/logout/").status_code == 302
    await assert_closed_for_login(doomed, "session ended")
    await survivor.ping()  # the other session's socket is untouched
    await normal_turn(survivor)
    await survivor.close()


async def test_a_password_change_elsewhere_closes_the_other_sessions_sockets(
    app: AppServer, user: str
) -> None:
    victim, owner = logged_in(app, user), logged_in(app, user)
    stolen = await ready_socket(app, session=victim.session)
    own = await ready_socket(app, session=owner.session)
    owner.csrf("/account/password/")
    changed = owner.post(
        "/account/password/",
        {
            "old_password": PASSWORD,
            "new_password1": "another-horse-battery-7",
            "new_password2": "another-horse-battery-7",
        },
    )
    assert changed.status_code == 302, changed.text[:800]
    await assert_closed_for_login(stolen, "password was changed")
    # The stolen session opens nothing new.
    assert (await (await open_socket(app, session=victim.session)).closed_with())[0] == 4401
    # The session that changed it got a new key (Django cycles it): its old
    # socket ends too (seen as either change, depending on which the re-check
    # saw first), and the page reconnects with the new cookie.
    await assert_closed_for_login(own, "log in again")
    await assert_works_again_with(app, owner)
    visitor = Visitor(app)
    assert visitor.login(user, "another-horse-battery-7").status_code == 302
    await assert_works_again_with(app, visitor)


async def assert_works_again_with(app: AppServer, visitor: Visitor) -> None:
    sock = await ready_socket(app, session=visitor.session)
    await normal_turn(sock)
    await sock.close()


def admin_deactivate(admin: Visitor, user_id: int) -> None:
    path = f"/admin/auth/user/{user_id}/change/"
    page = admin.http.get(path).text
    username = re.search(r'name="username"[^>]*value="([^"]+)"', page)
    joined = re.findall(r'name="(date_joined_[01])"[^>]*value="([^"]+)"', page)
    assert username and joined, page[:2000]
    # is_active left out of the form: unchecked.
    data = {"username": username.group(1), **dict(joined), "_save": "Save"}
    response = admin.post(path, data)
    assert response.status_code == 302, response.text[:3000]


async def test_an_account_made_inactive_in_the_admin_loses_its_sockets(
    app: AppServer, user: str
) -> None:
    staff = f"s{uuid.uuid4().hex[:8]}"
    app.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.create_superuser({staff!r}, password={PASSWORD!r})",
    )
    victim = logged_in(app, user)
    token = victim.create_token("laptop")
    browser = await ready_socket(app, session=victim.session)
    program = await ready_socket(app, token=token, origin=None)
    user_id = int(app.manage("shell", "-c", f"{LOOKUP_ID}{user!r}).pk)").split()[-1])
    admin_deactivate(logged_in(app, staff), user_id)
    await assert_closed_for_login(browser, "no longer active")
    await assert_closed_for_login(program, "no longer active")
    # And no new socket opens for that account.
    refused = await open_socket(app, session=victim.session)
    assert (await refused.closed_with())[0] == 4401


LOOKUP_ID = (
    "from django.contrib.auth import get_user_model; print(get_user_model().objects.get(username="
)


async def test_revoking_a_token_closes_its_sockets_and_leaves_the_rest(
    app: AppServer, user: str
) -> None:
    visitor = logged_in(app, user)
    revoked, kept = visitor.create_token("old"), visitor.create_token("new")
    doomed = await ready_socket(app, token=revoked, origin=None)
    other = await ready_socket(app, token=kept, origin=None)
    browser = await ready_socket(app, session=visitor.session)
    old_id = min(visitor.token_ids())  # "old" was issued first
    assert visitor.post(f"/tokens/{old_id}/revoke/").status_code == 302
    await assert_closed_for_login(doomed, "token was revoked")
    for sock in (other, browser):
        await sock.ping()
    await normal_turn(other)
    for sock in (other, browser):
        await sock.close()


async def test_an_answer_accepted_before_revocation_finishes_and_nothing_new_starts(
    app: AppServer, model: OfflineModelServer, user: str
) -> None:
    visitor = logged_in(app, user)
    token = visitor.create_token()
    sock = await ready_socket(app, token=token, origin=None)
    model.script_chat(Reply(tokens=[f"w{i} " for i in range(40)], token_delay=0.05))
    await sock.send("message.send", client_message_id="before", text="a long answer, please")
    accepted = (await sock.receive_until("message.accepted"))[-1]
    await sock.receive_until("assistant.delta")
    visitor.post(f"/tokens/{visitor.token_ids()[0]}/revoke/")
    await assert_closed_for_login(sock, "token was revoked")
    # The answer goes on without the socket, and ends complete.
    watcher = await ready_socket(app, session=visitor.session)
    await watcher.send("conversation.subscribe", conversation_id=accepted["conversation_id"])
    final = (await watcher.receive_until("assistant.completed", timeout=20))[-1]
    assert final["status"] == "complete" and final["text_length"] == len(
        "".join(f"w{i} " for i in range(40))
    )
    # The revoked token opens nothing new.
    again = await open_socket(app, token=token, origin=None)
    assert (await again.closed_with())[0] == 4401
    await watcher.close()


async def test_an_expired_session_and_a_silent_deactivation_are_noticed(
    quick_recheck_app: AppServer,
) -> None:
    app = quick_recheck_app
    name = f"e{uuid.uuid4().hex[:8]}"
    app.create_user(name)
    visitor = logged_in(app, name)
    sock = await ready_socket(app, session=visitor.session)
    # No signal: the session just expires (as it would by age), in the database
    # and, with Redis, in the session cache (cached_db), where its entry expires
    # at the same age.
    app.manage(
        "shell",
        "-c",
        "from datetime import timedelta; from django.utils import timezone; "
        "from django.conf import settings; from django.core.cache import caches; "
        "from django.contrib.sessions.backends.cached_db import KEY_PREFIX; "
        "from django.contrib.sessions.models import Session; "
        f"Session.objects.filter(session_key={visitor.session!r})"
        ".update(expire_date=timezone.now() - timedelta(seconds=1)); "
        f"caches[settings.SESSION_CACHE_ALIAS].delete(KEY_PREFIX + {visitor.session!r})",
    )
    await assert_closed_for_login(sock, "session ended")

    token = logged_in(app, name).create_token()
    program = await ready_socket(app, token=token, origin=None)
    app.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.filter(username={name!r}).update(is_active=False)",
    )
    await assert_closed_for_login(program, "no longer active")


# --- 2. cross-site websocket hijacking from the same host -----------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:1",  # another port of the app's host
        "https://{host}",  # the same host and port over another scheme
        "http://localhost:{port}",  # another host name
        "null",  # a sandboxed frame or a file: page
        None,  # no Origin at all with a cookie
    ],
)
async def test_a_cookie_socket_from_another_origin_is_refused(
    app: AppServer, user: str, origin: str | None
) -> None:
    visitor = logged_in(app, user)
    host = app.url.removeprefix("http://")
    if origin is not None:
        origin = origin.format(host=host, port=host.rsplit(":", 1)[1])
    with pytest.raises(websockets.InvalidStatus) as refused:
        await open_socket(app, session=visitor.session, origin=origin)
    assert refused.value.response.status_code == 403
    # The same cookie from the app's own origin works, and so does a program's token.
    await assert_works_again_with(app, visitor)
    program = await ready_socket(app, token=visitor.create_token(), origin=None)
    await normal_turn(program)
    await program.close()


# --- 4. frames that crashed the socket --------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("[" * 20_000 + "]" * 20_000, "too_deep"),
        ('{"type": "ping", "id": ' + "[" * 20_000 + "]" * 20_000 + "}", "too_deep"),
        ('{"type": "conversation.subscribe", "offset": ' + "9" * 5000 + "}", "number_too_large"),
        ('{"type": "ping", "id": 1e999}', "number_too_large"),
        ('{"type": "message.send", "client_message_id": "k1", "text": "\\ud800"}', "bad_text"),
        ('{"type": "message.send", "client_message_id": "\\udfff", "text": "hi"}', "bad_text"),
        ('{"type": "message.send", "client_message_id": "k2", "text": "a\\u0000b"}', "bad_text"),
        ('{"type": "ping", "id": NaN}', "bad_json"),
        ('{"type": "conversation.subscribe", "conversation_id": "x", "offset": -1}', "bad_frame"),
    ],
)
async def test_a_hostile_frame_gets_a_typed_error_and_the_socket_lives(
    app: AppServer, user: str, frame: str, code: str
) -> None:
    visitor = logged_in(app, user)
    sock = await ready_socket(app, session=visitor.session)
    await sock.send_raw(frame)
    answer = await sock.receive()
    assert answer["type"] == "error" and answer["code"] == code, answer
    await sock.ping()
    await normal_turn(sock)
    await sock.close()
