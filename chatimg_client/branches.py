"""Versions from the terminal: list the active branch, or switch to another version.

One request and its reply over websocket protocol v1 (docs/protocol.md, "Edit and
branch"): `branch.list` → `branch.listed`, `branch.switch` → `branch.switched`.
Editing the last message is a turn like any other (session.py, `edit=True`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TextIO

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from chatimg_client.session import (
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAUTHENTICATED,
    websocket_url,
)

PREVIEW_CHARS = 70
#: A switch to an early version sends the rest of the conversation: allow big frames.
MAX_FRAME_BYTES = 16 * 2**20
#: One request, one reply: a server that never answers is a network failure.
REPLY_SECONDS = 30


def describe(message: dict[str, Any]) -> str:
    """`#42 assistant  2/3 (versions 17 42 51)  The first line of its text…`"""
    versions = [int(v) for v in message.get("versions") or [message["id"]]]
    where = ""
    if len(versions) > 1:
        ids = " ".join(str(v) for v in versions)
        where = f"  {versions.index(message['id']) + 1}/{len(versions)} (versions {ids})"
    line = " ".join(str(message.get("text", "")).split())
    if len(line) > PREVIEW_CHARS:
        line = line[: PREVIEW_CHARS - 1] + "…"
    return f"#{message['id']} {message['role']:<9}{where}  {line}"


async def run_branch(
    *,
    url: str,
    token: str,
    conversation_id: str,
    switch_to: int | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """List the active branch (switch_to None) or switch to the version `switch_to`."""
    out, err = out or sys.stdout, err or sys.stderr
    if switch_to is None:
        request: dict[str, Any] = {"type": "branch.list", "conversation_id": conversation_id}
        reply = "branch.listed"
    else:
        request = {
            "type": "branch.switch",
            "conversation_id": conversation_id,
            "message_id": switch_to,
        }
        reply = "branch.switched"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            asyncio.timeout(REPLY_SECONDS),
            connect(websocket_url(url), additional_headers=headers, max_size=MAX_FRAME_BYTES) as ws,
        ):
            while True:
                frame = json.loads(await ws.recv(decode=True))
                kind = frame.get("type")
                if kind == "session.ready":
                    await ws.send(json.dumps(request))
                elif kind == "error":
                    if frame.get("code") == "unauthenticated":
                        err.write("The API token was not accepted (unknown or revoked).\n")
                        return EXIT_UNAUTHENTICATED
                    err.write(f"The server refused: {frame.get('message')} ({frame.get('code')})\n")
                    return EXIT_REFUSED
                elif kind == reply:
                    break
    except (ConnectionClosed, InvalidHandshake, InvalidStatus, OSError, TimeoutError) as exc:
        err.write(f"Could not talk to the server: {exc}\n")
        return EXIT_NETWORK
    if reply == "branch.switched" and frame.get("replaces_message_id") is None:
        err.write(f"#{switch_to} is already on the active branch.\n")
        return EXIT_OK
    if reply == "branch.switched":
        err.write(f"Switched to #{switch_to}; the branch from there on:\n")
    for message in frame.get("messages", []):
        out.write(describe(message) + "\n")
    return EXIT_OK
