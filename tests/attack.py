"""A client that attacks the app as the security battery did: real HTTP, real websockets.

The app runs in its own daphne process (tests/servers.py). `Visitor` is one
browser-like HTTP session (cookies, CSRF token) and `Sock` one websocket.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import websockets

from offline_model import OfflineModelServer
from tests.servers import PASSWORD, AppServer, launch, server_env, stop

#: What the battery ran against: DEBUG off, plain http on loopback, no title requests.
PRODUCTION_LIKE = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "attack-battery-" + "x" * 40,
    "DJANGO_SECURE_COOKIES": "0",
    "CHATIMG_LLM_TITLES": "0",
}


def serve(model: OfflineModelServer, **env: str) -> Iterator[AppServer]:
    """The app in its own daphne process, production-like plus `env`; stopped after."""
    tmp = Path(tempfile.mkdtemp(prefix="chatimg-attack-"))
    server = None
    try:
        settings = server_env(tmp, model.base_url, **{**PRODUCTION_LIKE, **env})
        server = launch(settings, tmp / "server.log")
        yield server
    finally:
        if server is not None and server.process is not None:
            stop(server.process)
        shutil.rmtree(tmp, ignore_errors=True)


class Visitor:
    """One HTTP session against the app, with its cookies, as a browser keeps them."""

    def __init__(self, server: AppServer) -> None:
        self.server = server
        self.http = httpx2.Client(base_url=server.url, follow_redirects=False, timeout=20)

    def csrf(self, path: str = "/login/") -> str:
        self.http.get(path)
        return self.http.cookies["csrftoken"]

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        token = self.http.cookies.get("csrftoken") or self.csrf()
        return self.http.post(
            path,
            data={"csrfmiddlewaretoken": token, **(data or {})},
            headers={"Referer": self.server.url + path},
            **kwargs,
        )

    def login(self, username: str, password: str = PASSWORD) -> Any:
        self.csrf("/login/")
        response = self.post("/login/", {"username": username, "password": password})
        return response

    @property
    def session(self) -> str | None:
        return self.http.cookies.get("sessionid")

    def create_token(self, name: str = "cli") -> str:
        """POST the token form and read the raw token from the page it leads to."""
        self.csrf("/tokens/")
        response = self.post("/tokens/", {"name": name})
        if response.status_code in (301, 302, 303):
            response = self.http.get(response.headers["location"])
        found = re.search(r'value="(cit_[^"]+)"', response.text)
        assert found, response.text[:2000]
        return found.group(1)

    def token_ids(self) -> list[int]:
        page = self.http.get("/tokens/").text
        return [int(n) for n in re.findall(r"/tokens/(\d+)/revoke/", page)]

    def close(self) -> None:
        self.http.close()


class Sock:
    """One websocket to the app, with the frames it received."""

    def __init__(self, connection: Any) -> None:
        self.ws = connection
        self.frames: list[dict[str, Any]] = []

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": kind, **fields}))

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)

    async def receive(self, timeout: float = 10) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def receive_until(self, *kinds: str, timeout: float = 10) -> list[dict[str, Any]]:
        collected = []
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.receive(max(0.05, deadline - time.monotonic()))
            collected.append(frame)
            if frame["type"] in kinds:
                return collected

    async def ping(self, timeout: float = 10) -> list[dict[str, Any]]:
        """Everything up to the pong of a fresh ping: proves the socket still answers."""
        marker = uuid.uuid4().hex
        await self.send("ping", id=marker)
        collected = []
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.receive(max(0.05, deadline - time.monotonic()))
            collected.append(frame)
            if frame["type"] == "pong" and frame.get("id") == marker:
                return collected

    async def closed_with(self, timeout: float = 10) -> tuple[int | None, list[dict[str, Any]]]:
        """Read until the server closes: (close code, frames read meanwhile)."""
        collected = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"still open after {timeout} s: {collected}")
                message = await asyncio.wait_for(self.ws.recv(), remaining)
                collected.append(json.loads(message))
        except websockets.ConnectionClosed as closed:
            return (closed.rcvd.code if closed.rcvd else None), collected

    async def close(self) -> None:
        await self.ws.close()


async def assert_closed_for_login(sock: Sock, reason: str) -> None:
    """The server says why (a typed `error`) and closes with 4401: log in again."""
    code, frames = await sock.closed_with(timeout=8)
    assert code == 4401, (code, frames)
    errors = [f for f in frames if f["type"] == "error"]
    assert errors and errors[-1]["code"] == "unauthenticated", frames
    assert reason in errors[-1]["message"], errors[-1]


def ws_url(server: AppServer) -> str:
    return server.url.replace("http://", "ws://") + "/ws/chat/"


async def open_socket(
    server: AppServer,
    *,
    session: str | None = None,
    token: str | None = None,
    origin: str | None = "same",
) -> Sock:
    """Open the chat socket as a browser (cookie + Origin) or a program (bearer token).

    Raises websockets.InvalidStatus when the handshake is refused (HTTP 403).
    """
    headers: dict[str, str] = {}
    if session:
        headers["Cookie"] = f"sessionid={session}"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if origin == "same":
        origin = server.url
    connection = await websockets.connect(
        ws_url(server),
        additional_headers=headers,
        origin=origin,  # type: ignore[arg-type]
        open_timeout=10,
        max_size=2**22,
    )
    return Sock(connection)


async def ready_socket(server: AppServer, **kwargs: Any) -> Sock:
    sock = await open_socket(server, **kwargs)
    first = await sock.receive()
    assert first["type"] == "session.ready", first
    return sock


async def normal_turn(sock: Sock, text: str = "hello there") -> dict[str, Any]:
    """A message and its whole answer (the accepted frame is returned): the product works."""
    key = uuid.uuid4().hex
    await sock.send("message.send", client_message_id=key, text=text)
    deadline = time.monotonic() + 30
    accepted: dict[str, Any] | None = None
    while True:
        frame = await sock.receive(max(0.05, deadline - time.monotonic()))
        if frame["type"] == "message.accepted" and frame["client_message_id"] == key:
            accepted = frame
        elif frame["type"] == "error" and frame.get("ref") == key:
            raise AssertionError(f"the message was refused: {frame}")
        elif (
            accepted is not None
            and frame["type"] in ("assistant.completed", "assistant.failed")
            and frame["message_id"] == accepted["assistant_message_id"]
        ):
            assert frame["type"] == "assistant.completed", frame
            assert frame["status"] == "complete", frame
            return accepted
