"""A seeded mutator throws 10,000 broken frames at one socket of the app served by daphne.

Every frame must get typed answers only (an `error` with a code of the protocol's
vocabulary, or a known server frame), a frame that is not a protocol frame must
get an `error`, and the socket must still answer a ping after each one. A
ping follows each frame, so the answers of each frame are the ones before
its pong. Frames go in batches (a pipeline), which keeps the run to seconds.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offline_model import OfflineModelServer
from tests.attack import Visitor, normal_turn, ready_socket
from tests.servers import AppServer, launch, server_env, stop

SEED = 20261110
FRAMES = 10_000
BATCH = 50

SERVER_TYPES = {
    "error",
    "pong",
    "session.ready",
    "message.accepted",
    "message.created",
    "assistant.started",
    "assistant.delta",
    "assistant.completed",
    "assistant.failed",
    "tool.started",
    "tool.completed",
    "tool.failed",
    "tool.preview",
    "conversation.state",
    "conversation.updated",
    "turn.regenerating",
    "branch.switched",
    "branch.listed",
}
ERROR_CODES = {
    "bad_frame",
    "bad_json",
    "bad_text",
    "too_deep",
    "number_too_large",
    "frame_too_large",
    "unknown_type",
    "not_found",
    "message_too_long",
    "rate_limited",
    "turn_in_progress",
    "nothing_to_regenerate",
    "attachment_not_found",
    "too_many_attachments",
}
CLIENT_TYPES = {
    "message.send",
    "turn.cancel",
    "turn.regenerate",
    "conversation.subscribe",
    "ping",
    "message.edit",
    "branch.switch",
    "branch.list",
}


def seeds(conversation_id: str) -> list[dict[str, Any]]:
    return [
        {"type": "message.send", "client_message_id": "k", "text": "hello"},
        {
            "type": "message.send",
            "conversation_id": conversation_id,
            "client_message_id": "k2",
            "text": "draw a red kite",
        },
        {"type": "conversation.subscribe", "conversation_id": conversation_id, "offset": 0},
        {
            "type": "conversation.subscribe",
            "conversation_id": conversation_id,
            "message_id": 1,
            "offset": 3,
        },
        {"type": "turn.cancel", "conversation_id": conversation_id},
        {"type": "turn.regenerate", "conversation_id": conversation_id},
        {"type": "ping", "id": "p"},
        {
            "type": "message.edit",
            "conversation_id": conversation_id,
            "message_id": 1,
            "client_message_id": "k3",
            "text": "edited",
        },
        {"type": "branch.switch", "conversation_id": conversation_id, "message_id": 1},
        {"type": "branch.list", "conversation_id": conversation_id},
    ]


NASTY_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**63,
    1.5,
    "",
    " ",
    "x" * 9000,
    "😀",
    [],
    {},
    [[[]]],
    {"a": {"b": {}}},
    str(uuid.uuid4()),
    "not-a-uuid",
]
RAW_VALUES = [
    "9" * 5000,
    "-" + "9" * 30,
    "1e999",
    "NaN",
    "Infinity",
    '"\\ud800"',
    '"\\udfff\\ud800"',
    '"a\\u0000b"',
    '"\\ud83d\\ude00"',
    "[" * 5000 + "]" * 5000,
    "{" * 40 + "}" * 40,
    '"\\x"',
    "tru",
    "01",
]
SPLICE = [*'{}[]":,\\0-e.tfn ', "\\u", "\\ud800", "\u00e9", "\\\\", '"type"']


class Mutator:
    def __init__(self, seed: int, conversation_id: str) -> None:
        self.random = random.Random(seed)
        self.seeds = seeds(conversation_id)

    def frame(self) -> str:
        r = self.random
        payload = json.loads(json.dumps(r.choice(self.seeds)))
        text: str | None = None
        for _ in range(r.randint(1, 3)):
            move = r.random()
            if text is None and move < 0.35:
                key = r.choice([*payload.keys(), "type", "extra"])
                payload[key] = r.choice(NASTY_VALUES)
            elif text is None and move < 0.5 and payload:
                payload.pop(r.choice(list(payload)), None)
            elif text is None and move < 0.7:
                key = r.choice([*payload.keys(), "type", "id"])
                body = json.dumps({k: v for k, v in payload.items() if k != key})
                raw = r.choice(RAW_VALUES)
                text = body[:-1] + (", " if len(body) > 2 else "") + f'"{key}": {raw}' + "}"
            else:
                text = text if text is not None else json.dumps(payload)
                text = self.bytewise(text)
        return text if text is not None else json.dumps(payload)

    def bytewise(self, text: str) -> str:
        r = self.random
        at = r.randrange(len(text) + 1)
        choice = r.random()
        if choice < 0.3:
            return text[:at] + text[at + 1 :]
        if choice < 0.6:
            return text[:at] + r.choice(SPLICE) + text[at:]
        if choice < 0.8:
            return text[:at]
        end = min(len(text), at + r.randint(1, 20))
        return text[:end] + text[at:end] * r.randint(1, 5) + text[end:]


def is_protocol_frame(text: str) -> bool:
    """Whether a frame at least names a known type (then an error is not required)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    kind = value.get("type") if isinstance(value, dict) else None
    return isinstance(kind, str) and kind in CLIENT_TYPES


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[AppServer, OfflineModelServer]]:
    tmp = Path(tempfile.mkdtemp(prefix="chatimg-fuzz-"))
    server = None
    with OfflineModelServer(token_delay=0.0) as model:
        try:
            env = server_env(
                tmp,
                model.base_url,
                DJANGO_DEBUG="0",
                DJANGO_SECRET_KEY="fuzz-" + "y" * 50,
                DJANGO_SECURE_COOKIES="0",
                CHATIMG_LLM_TITLES="0",
                # The flood guards are not under test here.
                CHATIMG_FRAMES_PER_10S="1000000",
                CHATIMG_MESSAGES_PER_MINUTE="100000",
            )
            server = launch(env, tmp / "server.log")
            yield server, model
        finally:
            if server is not None and server.process is not None:
                stop(server.process)
            shutil.rmtree(tmp, ignore_errors=True)


async def test_ten_thousand_mutated_frames_each_get_a_typed_answer_on_a_live_socket(
    app: tuple[AppServer, OfflineModelServer],
) -> None:
    server, _model = app
    server.create_user("fuzz")
    visitor = Visitor(server)
    visitor.login("fuzz")
    sock = await ready_socket(server, session=visitor.session)
    accepted = await normal_turn(sock, "a first message")
    mutator = Mutator(SEED, accepted["conversation_id"])
    frames = [mutator.frame() for _ in range(FRAMES)]
    untyped: list[tuple[str, Any]] = []
    unanswered: list[str] = []
    for start in range(0, FRAMES, BATCH):
        batch = frames[start : start + BATCH]
        for n, text in enumerate(batch):
            await sock.send_raw(text)
            await sock.send("ping", id=f"fuzz-{start + n}")
        for n, text in enumerate(batch):
            answers = []
            while True:
                frame = await sock.receive(timeout=20)
                if frame.get("type") == "pong" and frame.get("id") == f"fuzz-{start + n}":
                    break
                answers.append(frame)
            for frame in answers:
                if frame.get("type") not in SERVER_TYPES or (
                    frame["type"] == "error" and frame.get("code") not in ERROR_CODES
                ):
                    untyped.append((text[:200], frame))
            # Answers of a frame's turn may arrive later; its own error comes first.
            if not is_protocol_frame(text) and not any(f["type"] == "error" for f in answers):
                unanswered.append(text[:200])
    assert not untyped, untyped[:5]
    assert not unanswered, unanswered[:5]
    # Still the product: a normal turn on the same socket.
    await normal_turn(sock, "still there?")
    await sock.close()
