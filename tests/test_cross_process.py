"""Two app processes sharing Redis and one database: a client on each.

Runs when REDIS_URL is set (the PostgreSQL + Redis run of `make test`); the
processes share the SQLite file or the PostgreSQL database of this run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from offline_model import OfflineModelServer, Reply
from tests.servers import AppServer, launch, server_env, stop

REDIS_URL = os.environ.get("REDIS_URL", "")
pytestmark = pytest.mark.skipif(
    not REDIS_URL, reason="needs REDIS_URL: two processes share events only through Redis"
)

TOKENS = [f"piece{i} " for i in range(60)]
UPSTREAM = "".join(TOKENS)


@pytest.fixture(scope="module")
def model() -> Iterator[OfflineModelServer]:
    with OfflineModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def two_processes(model: OfflineModelServer) -> Iterator[tuple[AppServer, AppServer, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="chatimg-xproc-"))
    overrides = {
        "REDIS_URL": REDIS_URL,
        # Our own channel-layer keys: nothing else on this Redis can interfere.
        "CHATIMG_CHANNEL_PREFIX": f"chatimg-test-{uuid.uuid4().hex[:8]}",
        # No title requests: one that a test's first exchange set off, late
        # under load, took the next test's scripted reply (the model is shared).
        "CHATIMG_LLM_TITLES": "0",
    }
    if os.environ.get("DATABASE_URL"):
        overrides["DATABASE_URL"] = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + (
            f"/chatimg_xproc_{uuid.uuid4().hex[:8]}"
        )
    env = server_env(tmp, model.base_url, **overrides)
    servers: list[AppServer] = []
    try:
        if "DATABASE_URL" in overrides:
            create_database(overrides["DATABASE_URL"])
        servers.append(launch(env, tmp / "one.log"))
        servers.append(launch(env, tmp / "two.log", migrate=False))
        token = servers[0].manage("shell", "-c", ISSUE_TOKEN).strip().splitlines()[-1]
        yield servers[0], servers[1], token
    finally:
        for server in servers:
            if server.process is not None:
                stop(server.process)
        if "DATABASE_URL" in overrides:
            drop_database(overrides["DATABASE_URL"])
        shutil.rmtree(tmp, ignore_errors=True)


ISSUE_TOKEN = (
    "from django.contrib.auth import get_user_model; "
    "from conversations.models import ApiToken; "
    "user = get_user_model().objects.create_user('xproc'); "
    "print(ApiToken.issue(user, 'test')[1])"
)


def create_database(url: str) -> None:
    import psycopg

    server, name = url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    import psycopg

    server, name = url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Client:
    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.frames: list[dict[str, Any]] = []

    async def send(self, kind: str, **fields: Any) -> None:
        await self.socket.send(json.dumps({"type": kind, **fields}))

    async def receive_until(self, *kinds: str) -> list[dict[str, Any]]:
        collected = []
        while True:
            frame = json.loads(await asyncio.wait_for(self.socket.recv(), 10))
            self.frames.append(frame)
            collected.append(frame)
            if frame["type"] in kinds:
                return collected

    def text(self, message_id: int, have: str = "") -> str:
        text = have
        for frame in self.frames:
            if frame["type"] == "assistant.delta" and frame["message_id"] == message_id:
                assert frame["offset"] <= len(text), "a gap"
                text = text[: frame["offset"]] + frame["text"]
        return text


@pytest.fixture
async def clients(two_processes: Any) -> AsyncIterator[Any]:
    one, two, token = two_processes
    opened: list[Any] = []

    async def open_on(server: AppServer) -> Client:
        url = server.url.replace("http://", "ws://") + "/ws/chat/"
        socket = await websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}
        )
        opened.append(socket)
        client = Client(socket)
        assert (await client.receive_until("session.ready"))[-1]["user"] == "xproc"
        return client

    yield one, two, open_on
    for socket in opened:
        await socket.close()


async def test_a_client_on_each_process_follows_the_same_answer(
    clients: Any, model: OfflineModelServer
) -> None:
    one, two, open_on = clients
    model.script_chat(Reply(tokens=TOKENS, token_delay=0.01))
    writer, reader = await open_on(one), await open_on(two)
    await writer.send("message.send", client_message_id=uuid.uuid4().hex, text="go")
    accepted = (await writer.receive_until("message.accepted"))[-1]
    answer_id = accepted["assistant_message_id"]
    # The reader, on the other process, joins mid-answer from scratch.
    await reader.send("conversation.subscribe", conversation_id=accepted["conversation_id"])
    await writer.receive_until("assistant.completed")
    await reader.receive_until("assistant.completed")
    assert writer.text(answer_id) == reader.text(answer_id) == UPSTREAM


async def test_a_tab_on_the_other_process_sees_the_question_then_its_answer(
    clients: Any, model: OfflineModelServer
) -> None:
    """The question reaches the other process with the answer's announcement: in order."""
    one, two, open_on = clients
    writer, tab = await open_on(one), await open_on(two)
    model.script_chat(Reply(tokens=["hello"]))
    await writer.send("message.send", client_message_id=uuid.uuid4().hex, text="first")
    conversation_id = (await writer.receive_until("message.accepted"))[-1]["conversation_id"]
    await writer.receive_until("assistant.completed")
    await tab.send("conversation.subscribe", conversation_id=conversation_id)
    await tab.receive_until("assistant.completed")  # caught up on the first answer

    model.script_chat(Reply(tokens=TOKENS, token_delay=0.01))
    await writer.send(
        "message.send",
        client_message_id=uuid.uuid4().hex,
        conversation_id=conversation_id,
        text="and a second question",
    )
    answer_id = (await writer.receive_until("message.accepted"))[-1]["assistant_message_id"]
    seen = await tab.receive_until("message.created")
    assert seen[-1]["text"] == "and a second question"
    assert not [f for f in seen if f.get("message_id") == answer_id], "the answer came first"
    later = await tab.receive_until("assistant.completed")
    assert [f["type"] for f in later if f["type"] == "assistant.started"] == ["assistant.started"]
    assert later[-1]["message_id"] == answer_id
    assert tab.text(answer_id) == UPSTREAM


async def test_a_client_that_moves_to_the_other_process_resumes_exactly(
    clients: Any, model: OfflineModelServer
) -> None:
    one, two, open_on = clients
    model.script_chat(Reply(tokens=TOKENS, token_delay=0.02))
    first = await open_on(one)
    await first.send("message.send", client_message_id=uuid.uuid4().hex, text="go")
    accepted = (await first.receive_until("message.accepted"))[-1]
    answer_id = accepted["assistant_message_id"]
    while len(first.text(answer_id)) < 100:
        await first.receive_until("assistant.delta")
    have = first.text(answer_id)
    await first.socket.close()

    moved = await open_on(two)
    await moved.send(
        "conversation.subscribe",
        conversation_id=accepted["conversation_id"],
        message_id=answer_id,
        offset=len(have),
    )
    await moved.receive_until("assistant.completed")
    assert moved.text(answer_id, have) == UPSTREAM


async def test_cancel_on_one_process_stops_the_turn_running_on_the_other(
    clients: Any, model: OfflineModelServer
) -> None:
    one, two, open_on = clients
    # 12 s in all: the cancel lands long before its end, even on a loaded machine.
    model.script_chat(Reply(tokens=TOKENS, token_delay=0.2))
    runner, canceller = await open_on(one), await open_on(two)
    await runner.send("message.send", client_message_id=uuid.uuid4().hex, text="go")
    accepted = (await runner.receive_until("message.accepted"))[-1]
    await runner.receive_until("assistant.delta")
    await canceller.send("turn.cancel", conversation_id=accepted["conversation_id"])
    final = (await runner.receive_until("assistant.completed"))[-1]
    assert final["status"] == "cancelled"
    shown = runner.text(accepted["assistant_message_id"])
    assert shown and len(shown) < len(UPSTREAM) and final["text_length"] == len(shown)


async def test_revocations_on_one_process_close_the_sockets_on_the_other(
    two_processes: Any,
) -> None:
    from tests.attack import Visitor, assert_closed_for_login, ready_socket

    one, two, _token = two_processes
    name = f"rev{uuid.uuid4().hex[:6]}"
    one.create_user(name)
    here = Visitor(one)
    assert here.login(name).status_code == 302
    token = here.create_token()
    # Sockets on the other process: one with the session cookie, one with the token.
    browser = await ready_socket(two, session=here.session)
    program = await ready_socket(two, token=token, origin=None)
    here.post(f"/tokens/{here.token_ids()[0]}/revoke/")
    await assert_closed_for_login(program, "token was revoked")
    await browser.ping()  # the session is untouched by the token's revocation
    here.post("/logout/")
    await assert_closed_for_login(browser, "session ended")
