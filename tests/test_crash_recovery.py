"""Real server processes, real signals: SIGKILL mid-answer and a restart, SIGTERM mid-answer.

The embedded stack (SQLite, one process): at start-up `recover_turns` closes
every answer still "streaming" at once, since none can be running before the
server starts, so the conversation is usable straight away instead of after
the stale-heartbeat sweep (a minute), with the text the user saw (the answer
stream, conversations/streams.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from offline_model import OfflineModelServer, Reply
from tests.servers import AppServer, launch, server_env, start, stop
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("REDIS_URL")), reason="the embedded stack (one process, no Redis)"
)

ISSUE_TOKEN = (
    "from django.contrib.auth import get_user_model; "
    "from conversations.models import ApiToken; "
    "user = get_user_model().objects.create_user('crash'); "
    "print(ApiToken.issue(user, 'test')[1])"
)


@pytest.fixture
def server() -> Iterator[tuple[AppServer, OfflineModelServer, str]]:
    with OfflineModelServer() as model, tempfile.TemporaryDirectory() as tmp:
        # Default checkpoint and sweep settings: nothing shortened for the test.
        env = server_env(Path(tmp), model.base_url)
        app = launch(env, Path(tmp) / "app.log")
        try:
            token = app.manage("shell", "-c", ISSUE_TOKEN).strip().splitlines()[-1]
            yield app, model, token
        finally:
            if app.process is not None:
                stop(app.process)


async def receive_until(socket: Any, *kinds: str) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = json.loads(await asyncio.wait_for(socket.recv(), 15))
        frames.append(frame)
        if frame["type"] in kinds:
            return frames


async def test_after_kill_9_mid_answer_and_a_restart_the_chat_is_usable_at_once(
    server: tuple[AppServer, OfflineModelServer, str],
) -> None:
    app, model, token = server
    model.script_chat(Reply(tokens=[f"w{n} " for n in range(400)], token_delay=0.02))
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(
        app.url.replace("http", "ws") + "/ws/chat/", additional_headers=headers
    ) as ws:
        await receive_until(ws, "session.ready")
        await ws.send(json.dumps({"type": "message.send", "client_message_id": "c1", "text": "go"}))
        frames = await receive_until(ws, "assistant.delta")
        conversation = frames[0]["conversation_id"]
        seen = ""
        while len(seen) < 150:  # a couple of seconds in, far short of a checkpoint (15 s)
            frame = frames.pop(0) if frames else json.loads(await asyncio.wait_for(ws.recv(), 15))
            if frame["type"] == "assistant.delta":
                assert frame["offset"] <= len(seen)
                seen = seen[: frame["offset"]] + frame["text"]
        assert app.process is not None
        app.process.send_signal(signal.SIGKILL)  # no drain, no goodbye
        app.process.wait(timeout=10)

    with sqlite3.connect(app.db_path) as db:
        (status,) = db.execute(
            "SELECT status FROM conversations_message WHERE role='assistant'"
        ).fetchone()
    assert status == "streaming"  # the dead process could not say otherwise

    assert "1 interrupted answer(s) closed." in app.manage("recover_turns")  # as `make run` does
    start(app)
    with sqlite3.connect(app.db_path) as db:
        (status, code, stored) = db.execute(
            "SELECT status, error_code, text FROM conversations_message WHERE role='assistant'"
        ).fetchone()
    assert (status, code) == ("interrupted", "interrupted")
    # Every character the user saw survived (deltas are kept outside the process
    # before they are sent), though no checkpoint had been written.
    assert stored.startswith(seen), (len(stored), len(seen))

    model.script_chat(Reply(text="Back again."))
    async with websockets.connect(
        app.url.replace("http", "ws") + "/ws/chat/", additional_headers=headers
    ) as ws:
        await receive_until(ws, "session.ready")
        await ws.send(
            json.dumps({"type": "conversation.subscribe", "conversation_id": conversation})
        )
        caught_up = await receive_until(ws, "assistant.failed", "assistant.completed")
        assert (
            caught_up[-1]["type"] == "assistant.failed" and caught_up[-1]["code"] == "interrupted"
        )
        # Not blocked by a dead answer: the next message is answered at once.
        await ws.send(
            json.dumps(
                {
                    "type": "message.send",
                    "conversation_id": conversation,
                    "client_message_id": "c2",
                    "text": "again",
                }
            )
        )
        done = await receive_until(ws, "assistant.completed", "assistant.failed", "error")
        assert done[-1]["type"] == "assistant.completed" and done[-1]["status"] == "complete"


async def test_sigterm_lets_the_running_answer_finish_and_a_new_send_is_told_to_come_back(
    server: tuple[AppServer, OfflineModelServer, str],
) -> None:
    app, model, token = server
    tokens = [f"w{n} " for n in range(100)]  # about 2 s at 20 ms a token
    model.script_chat(Reply(tokens=tokens, token_delay=0.02))
    headers = {"Authorization": f"Bearer {token}"}
    url = app.url.replace("http", "ws") + "/ws/chat/"
    async with (
        websockets.connect(url, additional_headers=headers) as ws,
        websockets.connect(url, additional_headers=headers) as idle,
    ):
        await receive_until(ws, "session.ready")
        await receive_until(idle, "session.ready")
        await ws.send(json.dumps({"type": "message.send", "client_message_id": "c1", "text": "go"}))
        await receive_until(ws, "assistant.delta")
        assert app.process is not None
        app.process.send_signal(signal.SIGTERM)  # a deploy

        async def draining() -> bool:
            return "draining:" in app.log_tail()

        await eventually(draining, what="the drain's start")
        # A socket open before the signal: daphne cancels its consumer now and
        # then (it shuts down every application instance), and its client must
        # hear either way: the refusal, or a close that says "reconnect".
        await idle.send(
            json.dumps({"type": "message.send", "client_message_id": "c3", "text": "hi"})
        )
        try:
            heard = (await receive_until(idle, "error"))[-1]
            assert (heard["code"], heard["ref"]) == ("server_draining", "c3")
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4503, closed

        # While it drains, a send is refused with a typed, retryable error.
        async with websockets.connect(url, additional_headers=headers) as late:
            await receive_until(late, "session.ready")
            await late.send(
                json.dumps({"type": "message.send", "client_message_id": "c2", "text": "hi"})
            )
            refused = (await receive_until(late, "error"))[-1]
        assert (refused["code"], refused["ref"]) == ("server_draining", "c2")

    assert app.process.wait(timeout=30) is not None  # it does exit, after the drain
    with sqlite3.connect(app.db_path) as db:
        rows = db.execute(
            "SELECT status, text FROM conversations_message WHERE role='assistant'"
        ).fetchall()
        sent_twice = db.execute(
            "SELECT count(*) FROM conversations_message WHERE client_message_id IN ('c2', 'c3')"
        ).fetchone()
    assert rows == [("complete", "".join(tokens))]  # finished during the drain, all of it
    assert sent_twice == (0,)  # the refused sends stored nothing


async def test_stop_on_an_answer_no_process_runs_ends_it_at_once_with_its_text(
    server: tuple[AppServer, OfflineModelServer, str],
) -> None:
    """Killed mid-answer and restarted without `recover_turns` (a plain `runserver`):
    the answer still says "streaming", no process runs it, and its heartbeat is fresh,
    so no sweep would close it for a minute. The user's Stop ends it at once."""
    app, model, token = server
    model.script_chat(Reply(tokens=[f"s{n} " for n in range(400)], token_delay=0.02))
    headers = {"Authorization": f"Bearer {token}"}
    url = app.url.replace("http", "ws") + "/ws/chat/"
    async with websockets.connect(url, additional_headers=headers) as ws:
        await receive_until(ws, "session.ready")
        await ws.send(json.dumps({"type": "message.send", "client_message_id": "o1", "text": "go"}))
        frames = await receive_until(ws, "message.accepted")
        conversation = frames[-1]["conversation_id"]
        seen = ""
        while len(seen) < 100:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if frame["type"] == "assistant.delta":
                seen = seen[: frame["offset"]] + frame["text"]
        assert app.process is not None
        app.process.send_signal(signal.SIGKILL)
        app.process.wait(timeout=10)

    start(app)  # no recover_turns first
    url = app.url.replace("http", "ws") + "/ws/chat/"
    async with websockets.connect(url, additional_headers=headers) as ws:
        await receive_until(ws, "session.ready")
        subscribe = {"type": "conversation.subscribe", "conversation_id": conversation}
        await ws.send(json.dumps(subscribe))
        state = (await receive_until(ws, "conversation.state"))[-1]
        assert state["status"] == "streaming"  # as the dead process left it
        # The text so far comes from the answer's stream, not from a running turn.
        caught_up = (await receive_until(ws, "assistant.delta"))[-1]
        assert caught_up["text"].startswith(seen)
        await ws.send(json.dumps({"type": "turn.cancel", "conversation_id": conversation}))
        end = (await receive_until(ws, "assistant.completed", "assistant.failed"))[-1]
    assert (end["type"], end["status"]) == ("assistant.completed", "cancelled")
    with sqlite3.connect(app.db_path) as db:
        (status, stored) = db.execute(
            "SELECT status, text FROM conversations_message WHERE role='assistant'"
        ).fetchone()
    assert status == "cancelled" and stored.startswith(seen) and end["text_length"] == len(stored)
