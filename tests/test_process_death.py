"""Two app processes on PostgreSQL + Redis, and what is left when one of them, or Redis, dies.

Real daphne processes, real signals, the default lease and sweep timing
(conversations/instances.py: nothing shortened). Redis is a redis-server of
this module's own, on a free port, so that it can be stopped and started by
pid mid-answer. Needs DATABASE_URL on PostgreSQL (the services run of
scripts/test) and the redis-server binary.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from offline_model import OfflineModelServer, Reply
from tests.servers import AppServer, free_port, launch, server_env, start, stop
from tests.test_cross_process import ISSUE_TOKEN, create_database, drop_database
from tests.waiting import eventually, within

DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_SERVER = shutil.which("redis-server")
pytestmark = [
    pytest.mark.skipif(
        not DATABASE_URL.startswith("postgres"),
        reason="needs DATABASE_URL on PostgreSQL: two processes share one database",
    ),
    pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary"),
]

#: The issue's promise: a follower on the survivor sees the answer closed this soon.
CLOSED_WITHIN = 10.0


class Redis:
    """A redis-server of our own: no persistence, loopback, stopped and started by pid."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                *(REDIS_SERVER, "--port", str(self.port), "--save", "", "--appendonly", "no"),
                *("--bind", "127.0.0.1", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        assert within(up, 20), "redis-server did not start"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def model() -> Iterator[OfflineModelServer]:
    with OfflineModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def stack(model: OfflineModelServer) -> Iterator[tuple[AppServer, AppServer, str, Redis, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="chatimg-death-"))
    redis = Redis(tmp)
    redis.start()
    database = DATABASE_URL.rsplit("/", 1)[0] + f"/chatimg_death_{uuid.uuid4().hex[:8]}"
    env = server_env(
        tmp,
        model.base_url,
        REDIS_URL=redis.url,
        DATABASE_URL=database,
        LOG_LEVEL="INFO",
        CHATIMG_LLM_TITLES="0",  # a title request would take the next scripted reply
    )
    servers: list[AppServer] = []
    try:
        create_database(database)
        servers.append(launch(env, tmp / "one.log"))
        servers.append(launch(env, tmp / "two.log", migrate=False))
        token = servers[0].manage("shell", "-c", ISSUE_TOKEN).strip().splitlines()[-1]
        yield servers[0], servers[1], token, redis, database
    finally:
        for server in servers:
            if server.process is not None:
                stop(server.process)
        redis.stop()
        drop_database(database)
        shutil.rmtree(tmp, ignore_errors=True)


class Client:
    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.frames: list[dict[str, Any]] = []

    async def send(self, kind: str, **fields: Any) -> None:
        await self.socket.send(json.dumps({"type": kind, **fields}))

    async def receive_until(self, *kinds: str, timeout: float = 30) -> list[dict[str, Any]]:
        collected = []
        async with asyncio.timeout(timeout):
            while True:
                frame = json.loads(await self.socket.recv())
                self.frames.append(frame)
                collected.append(frame)
                if frame["type"] in kinds:
                    return collected

    def text(self, message_id: int) -> str:
        """The answer's text as this client shows it; no gap, no repeat, in order."""
        text = ""
        for frame in self.frames:
            if frame["type"] == "assistant.delta" and frame["message_id"] == message_id:
                assert frame["offset"] == len(text), "a gap or a repeat"
                text += frame["text"]
        return text

    def ends(self, message_id: int) -> list[dict[str, Any]]:
        return [
            f
            for f in self.frames
            if f["type"] in ("assistant.completed", "assistant.failed")
            and f.get("message_id") == message_id
        ]


@pytest.fixture
async def clients(stack: Any) -> AsyncIterator[Any]:
    _one, _two, token, _redis, _database = stack
    opened: list[Any] = []

    async def open_on(server: AppServer) -> Client:
        url = server.url.replace("http://", "ws://") + "/ws/chat/"
        socket = await websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}
        )
        opened.append(socket)
        client = Client(socket)
        await client.receive_until("session.ready")
        return client

    yield open_on
    for socket in opened:
        await socket.close()


def query(database: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


async def start_answer(writer: Client, follower: Client, tokens: int) -> tuple[str, int]:
    await writer.send("message.send", client_message_id=uuid.uuid4().hex, text="go")
    accepted = (await writer.receive_until("message.accepted"))[-1]
    conversation, answer = accepted["conversation_id"], accepted["assistant_message_id"]
    await follower.send("conversation.subscribe", conversation_id=conversation)
    await follower.receive_until("conversation.state")
    return conversation, answer


async def test_the_follower_on_the_survivor_sees_a_killed_owners_answer_closed_with_its_text(
    stack: Any, clients: Any, model: OfflineModelServer
) -> None:
    one, two, _token, _redis, database = stack
    model.script_chat(Reply(tokens=[f"w{n} " for n in range(600)], token_delay=0.02))
    writer, follower = await clients(one), await clients(two)
    conversation, answer = await start_answer(writer, follower, 600)
    while len(follower.text(answer)) < 150:  # a couple of seconds in, short of a checkpoint
        await follower.receive_until("assistant.delta")
    seen = follower.text(answer)
    assert one.process is not None
    one.process.send_signal(signal.SIGKILL)  # no drain, no goodbye
    one.process.wait(timeout=10)
    try:
        end = (await follower.receive_until("assistant.failed", timeout=CLOSED_WITHIN))[-1]
    except TimeoutError:
        pytest.fail(f"not closed within {CLOSED_WITHIN} s of the kill:\n{two.log_tail()}")
    assert (end["status"], end["code"]) == ("interrupted", "interrupted")
    ((status, stored),) = query(
        database, "SELECT status, text FROM conversations_message WHERE id = %s", answer
    )
    assert status == "interrupted"
    assert stored.startswith(seen), (len(stored), len(seen))  # all the text it had seen
    assert end["text_length"] == len(stored) and follower.text(answer) == stored

    # Usable at once: the next message, on the survivor, is answered.
    model.script_chat(Reply(text="Back again."))
    await follower.send(
        "message.send", conversation_id=conversation, client_message_id="again", text="again"
    )
    done = (await follower.receive_until("assistant.completed", "error"))[-1]
    assert (done["type"], done.get("status")) == ("assistant.completed", "complete")
    start(one)  # for the next tests: a new process (a new instance) on a new port


async def test_stop_reaches_the_owner_and_ends_an_answer_no_turn_runs(
    stack: Any, clients: Any
) -> None:
    """An answer whose owner lives but runs no turn for it (left by a bug, or a
    turn that died without its end): a Stop on the other process ends it at once."""
    one, _two, _token, redis, database = stack
    here = await clients(one)
    await here.send("message.send", client_message_id=uuid.uuid4().hex, text="seed")
    accepted = (await here.receive_until("message.accepted"))[-1]
    await here.receive_until("assistant.completed", "assistant.failed")
    conversation = accepted["conversation_id"]
    import redis as redis_py

    owners = [
        key.decode().split(":lease:", 1)[1]
        for key in redis_py.Redis.from_url(redis.url).scan_iter("*:lease:*")
    ]
    assert len(owners) == 2
    # An answer of process two's, streaming in the database, that process two does not run.
    ((owner,),) = query(
        database,
        "SELECT owner FROM conversations_message WHERE id = %s",
        accepted["assistant_message_id"],
    )
    other = next(o for o in owners if o != owner)
    ((orphan,),) = query(
        database,
        "INSERT INTO conversations_message (conversation_id, role, status, text, "
        "client_message_id, model, usage, error_code, error_message, created_at, updated_at, "
        "heartbeat_at, truncated, owner, reply_to_id, parent_id, active, chosen_at, html, "
        "html_version) "
        "SELECT conversation_id, 'assistant', 'streaming', 'Half an ans', '', '', '{}', '', '', "
        "now(), now(), now(), false, %s, id, id, true, now(), '[]', 0 "
        "FROM conversations_message WHERE id = %s "
        "RETURNING id",
        other,
        accepted["message_id"],
    )
    await here.send("turn.cancel", conversation_id=conversation)
    end = (await here.receive_until("assistant.completed", "assistant.failed", timeout=5))[-1]
    assert (end["message_id"], end["status"]) == (orphan, "cancelled")
    ((status, text),) = query(
        database, "SELECT status, text FROM conversations_message WHERE id = %s", orphan
    )
    assert (status, text) == ("cancelled", "Half an ans")


async def test_a_redis_restart_mid_answer_ends_it_typed_and_leaves_nothing_stuck(
    stack: Any, clients: Any, model: OfflineModelServer
) -> None:
    one, two, _token, redis, database = stack
    model.script_chat(Reply(tokens=[f"r{n} " for n in range(300)], token_delay=0.02))
    writer, follower = await clients(one), await clients(two)
    conversation, answer = await start_answer(writer, follower, 300)
    await writer.receive_until("assistant.delta")
    redis.stop()  # by pid; everything in it is gone (no persistence)
    shown = len(writer.text(answer))
    # The answer goes on for its own process's socket meanwhile.
    while len(writer.text(answer)) <= shown + 20:
        await writer.receive_until("assistant.delta")
    redis.start()
    end = (await writer.receive_until("assistant.completed", "assistant.failed", timeout=60))[-1]
    assert end["type"] == "assistant.completed" or end["code"] in ("interrupted", "internal_error")
    assert writer.text(answer) == "".join(f"r{n} " for n in range(300))[: end["text_length"]]
    # The follower on the other process is told the end too, whatever it missed.
    await follower.receive_until("assistant.completed", "assistant.failed", timeout=60)

    async def nothing_streams() -> bool:
        rows = await asyncio.to_thread(
            query, database, "SELECT count(*) FROM conversations_message WHERE status='streaming'"
        )
        return rows == [(0,)]

    await eventually(nothing_streams, 30, "no answer left streaming")
    model.script_chat(Reply(text="Still here."))
    await writer.send(
        "message.send", conversation_id=conversation, client_message_id="after", text="again"
    )
    # The first send after the restart is answered (no connection pooled before
    # it fails the send), and reaches the follower on the other process.
    done = (await writer.receive_until("assistant.completed", "error", timeout=60))[-1]
    assert (done["type"], done.get("status")) == ("assistant.completed", "complete"), done
    seen = (await follower.receive_until("assistant.completed", "error", timeout=60))[-1]
    assert (seen["type"], seen["message_id"]) == ("assistant.completed", done["message_id"])
    assert follower.text(done["message_id"]) == "Still here."


async def test_followers_on_either_process_get_every_character_once_in_order(
    stack: Any, clients: Any, model: OfflineModelServer
) -> None:
    """In-process delivery on the answer's process, the stream on the other: the
    same text, no character lost, repeated or out of order, and one end each."""
    one, two, _token, _redis, _database = stack
    tokens = [f"t{n}{'é' if n % 7 == 0 else ''} " for n in range(400)]
    model.script_chat(Reply(text="Seed."))
    model.script_chat(Reply(tokens=tokens, token_delay=0.005))
    writer = await clients(one)
    await writer.send("message.send", client_message_id=uuid.uuid4().hex, text="seed")
    conversation = (await writer.receive_until("message.accepted"))[-1]["conversation_id"]
    await writer.receive_until("assistant.completed")
    early = [await clients(one), await clients(two)]
    for follower in early:  # following before the answer starts
        await follower.send("conversation.subscribe", conversation_id=conversation)
        await follower.receive_until("assistant.completed")
    await writer.send(
        "message.send", conversation_id=conversation, client_message_id="long", text="long"
    )
    answer = (await writer.receive_until("message.accepted"))[-1]["assistant_message_id"]
    while len(writer.text(answer)) < 300:
        await writer.receive_until("assistant.delta")
    late = [await clients(one), await clients(two)]
    for follower in late:  # joining mid-answer, from scratch
        await follower.send("conversation.subscribe", conversation_id=conversation)
    everyone = [writer, *early, *late]
    for client in everyone:
        await client.receive_until("assistant.completed")
    for client in everyone:
        assert client.text(answer) == "".join(tokens)
        assert len(client.ends(answer)) == 1
