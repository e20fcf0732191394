"""One message (or a Continue) and its answer, followed over websocket protocol v1.

The answer streams to `out`; progress, saved images and the conversation id go
to `err`. A dropped connection is resumed from the last character printed
(docs/protocol.md, "Reassembling text, and resuming").
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx2
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

EXIT_OK = 0
EXIT_NETWORK = 1  # could not (re)connect within GIVE_UP_AFTER
EXIT_FAILED = 2  # the answer failed (assistant.failed)
EXIT_UNAUTHENTICATED = 3  # bad or revoked token: reconnecting cannot help
EXIT_REFUSED = 4  # an `error` frame: turn_in_progress, rate_limited, not_found, …
EXIT_USAGE = 64  # bad arguments (not argparse's 2, which would read as "answer failed")
EXIT_INTERRUPTED = 130

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_IMAGES_DIR = "chatimg-images"
FIRST_DELAY, MAX_DELAY, GIVE_UP_AFTER = 0.5, 5.0, 30.0
MAX_REDIRECTS = 5
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
# Images in the final html; finds any whose tool.completed was lost with a dropped socket.
IMAGE_URL_RE = re.compile(r"/images/([0-9a-fA-F-]{36})/")


def websocket_url(base_url: str) -> str:
    """http://host/prefix → ws://host/prefix/ws/chat/ (https → wss)."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws/chat/", "", ""))


class ChatSession:
    """One message sent and its answer followed to the end, across reconnects."""

    def __init__(
        self,
        prompt: str,
        *,
        url: str,
        token: str,
        conversation_id: str | None = None,
        images_dir: Path | str = DEFAULT_IMAGES_DIR,
        out: TextIO | None = None,
        err: TextIO | None = None,
        raw: bool = False,
        continue_answer: bool = False,
        attach: list[Path] | None = None,
        edit: bool = False,
    ) -> None:
        self.prompt = prompt
        # Images to upload (POST /attachments/) and send with the message.
        self.attach = [Path(path) for path in attach or []]
        self.attachment_ids: list[str] | None = None  # once uploaded
        # Send `prompt` as a new version of the conversation's last message
        # (message.edit): its answer streams like any other.
        self.edit = edit
        # Carry on the conversation's last answer (cut at its length limit)
        # instead of sending `prompt`: only the new text is printed.
        self.continue_answer = continue_answer
        self.continue_sent = False
        self.base_url = url.rstrip("/")
        self.ws_url = websocket_url(url)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.conversation_id = conversation_id
        self.images_dir = Path(images_dir)
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.raw = raw
        # The idempotency key: a resend after a drop must not start a second answer.
        self.client_message_id = str(uuid.uuid4())
        self.message_id: int | None = None  # the assistant message, once accepted
        self.have = 0  # characters of the answer printed so far = the resume offset
        self.resyncing = False  # a subscribe for a gap is on its way
        self.sessions = 0  # session.ready frames seen, i.e. working connections
        self.images: dict[str, asyncio.Task[None]] = {}
        self.http: httpx2.AsyncClient | None = None
        self.midline = False  # stdout's last character was not a newline

    # --- connection loop -------------------------------------------------------

    async def run(self) -> int:
        async with httpx2.AsyncClient(timeout=60) as http:
            self.http = http
            if self.attach:
                refused = await self._upload_all()
                if refused is not None:
                    return refused
            code = await self._connect_and_follow()
            # Downloads still running when the answer ended badly: let them finish.
            await asyncio.gather(*self.images.values())
            return code

    async def _connect_and_follow(self) -> int:
        delay, deadline = FIRST_DELAY, time.monotonic() + GIVE_UP_AFTER
        while True:
            sessions = self.sessions
            try:
                async with connect(self.ws_url, additional_headers=self.headers) as ws:
                    return await self._follow(ws)
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == 4401:
                    return self._unauthenticated()
                reason = "connection lost"
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status < 500:  # refused, not down: retrying gives the same answer
                    self._note(f"The server refused the websocket (HTTP {status}).")
                    return EXIT_NETWORK
                reason = f"HTTP {status}"
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            if self.sessions > sessions:  # that connection worked: a fresh budget
                delay, deadline = FIRST_DELAY, time.monotonic() + GIVE_UP_AFTER
            if time.monotonic() + delay > deadline:
                self._note(f"[giving up: {reason}]")
                return EXIT_NETWORK
            self._note(f"[{reason}; reconnecting in {delay:g} s]")
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)

    async def _follow(self, ws: ClientConnection) -> int:
        while True:
            # recv() raises on any close, a normal one too: mid-answer, that is a drop.
            # The server sends text frames only; decode=True types it as str.
            message = await ws.recv(decode=True)
            frame = json.loads(message)
            if self.raw:
                self._write(f"{message}\n")
            code = await self._handle(ws, frame)
            if code is not None:
                return code

    # --- frames ----------------------------------------------------------------

    async def _handle(self, ws: ClientConnection, frame: dict[str, Any]) -> int | None:
        kind = frame.get("type")
        if kind == "session.ready":
            self.sessions += 1
            await self._send_or_resume(ws)
            return None
        if kind == "error":
            return self._refused(frame)
        if kind == "message.accepted" and frame.get("client_message_id") == self.client_message_id:
            self.conversation_id = frame["conversation_id"]
            self.message_id = frame["assistant_message_id"]
            return None
        if (
            kind == "assistant.started"
            and self.continue_answer
            and self.message_id is None
            and frame.get("conversation_id") == self.conversation_id
        ):
            # The answer that goes on; its text so far is not printed again.
            self.message_id = frame["message_id"]
            self.have = -1
        if self.message_id is None or frame.get("message_id") != self.message_id:
            return None  # not our answer (or a frame type we do not know): ignore it
        if kind == "assistant.delta":
            await self._delta(ws, frame["offset"], frame["text"])
        elif kind == "tool.started":
            doing = "editing image" if frame.get("name") == "edit_image" else "generating image"
            self._note(f"[{doing}: {frame.get('prompt', '')}…]")
        elif kind == "tool.preview":
            # Previews are shown as progress only: the final image is what is saved.
            index, partial = int(frame.get("index", 0)), int(frame.get("partial", 0))
            self._note(f"[preview {partial + 1} of image {index + 1}]")
        elif kind == "tool.completed":
            for image in frame.get("images") or [frame["image"]]:
                parents = [str(parent.get("id", "")) for parent in image.get("parents") or []]
                self._download(
                    str(image["id"]),
                    image["url"],
                    image.get("width"),
                    image.get("height"),
                    edited_from=parents,
                )
        elif kind == "tool.failed":
            self._note(f"[image failed: {frame.get('error', {}).get('message', 'unknown error')}]")
        elif kind in ("assistant.completed", "assistant.failed"):
            if frame.get("text_length", 0) > self.have:
                # Cannot happen with this server, but never end with a hole in the text.
                await self._subscribe(ws)
                return None
            return await self._finish(frame)
        return None

    async def _send_or_resume(self, ws: ClientConnection) -> None:
        if self.continue_answer and not self.continue_sent:
            self.continue_sent = True
            frame = {"type": "turn.continue", "conversation_id": self.conversation_id}
            await ws.send(json.dumps(frame))
        elif self.message_id is None and not self.continue_answer:
            # Not accepted yet (or the acceptance was lost): the same frame again,
            # which the server answers with `duplicate: true` if it got the first.
            send: dict[str, Any] = {
                "type": "message.edit" if self.edit else "message.send",
                "conversation_id": self.conversation_id,
                "client_message_id": self.client_message_id,
                "text": self.prompt,
            }
            if self.attachment_ids:
                send["attachments"] = self.attachment_ids
            await ws.send(json.dumps(send))
        else:
            await self._subscribe(ws)

    async def _subscribe(self, ws: ClientConnection) -> None:
        self.resyncing = True
        frame = {
            "type": "conversation.subscribe",
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
            "offset": self.have,
        }
        await ws.send(json.dumps(frame))

    async def _delta(self, ws: ClientConnection, offset: int, text: str) -> None:
        """The protocol's reassembly rules: every character printed once, in order."""
        if self.have < 0:  # a continued answer: it goes on from its first delta
            self.have = offset
        if offset + len(text) <= self.have:
            return  # a duplicate
        if offset > self.have:
            if not self.resyncing:  # a gap: ask for the rest, once
                await self._subscribe(ws)
            return
        self.resyncing = False
        piece = text[self.have - offset :]
        self.have += len(piece)
        if not self.raw:
            self._write(piece)

    async def _finish(self, frame: dict[str, Any]) -> int:
        for image_id in IMAGE_URL_RE.findall(frame.get("html") or ""):
            self._download(image_id, f"/images/{image_id}/")
        await asyncio.gather(*self.images.values())
        if self.have and not self.raw:
            self._write("\n")
        status = frame.get("status")
        if frame["type"] == "assistant.failed":
            self._note(f"The answer failed: {frame.get('message')} ({frame.get('code')}).")
            code = EXIT_FAILED
        elif status in ("complete", "cancelled"):
            if status == "cancelled":
                self._note("[the answer was cancelled]")
            if frame.get("truncated"):
                self._note("[the answer stopped at the model's length limit; --continue goes on]")
            code = EXIT_OK
        else:
            # E.g. "interrupted" (the server stopped mid-answer): the text is partial.
            self._note(f"The answer ended early ({status}).")
            code = EXIT_FAILED
        self._note(f"conversation: {self.conversation_id} (continue with --conversation)")
        return code

    def _refused(self, frame: dict[str, Any]) -> int:
        if frame.get("code") == "unauthenticated":
            return self._unauthenticated()
        self._note(f"The server refused the request: {frame.get('message')} ({frame.get('code')})")
        return EXIT_REFUSED

    def _unauthenticated(self) -> int:
        self._note(
            "The API token was not accepted (unknown or revoked). "
            "Create a new one at /tokens/ in the web app."
        )
        return EXIT_UNAUTHENTICATED

    # --- attachments -----------------------------------------------------------

    async def _upload_all(self) -> int | None:
        """Upload every --attach file before the message goes; an exit code if one fails.

        Uploads happen once: a resend after a reconnect reuses their ids.
        """
        assert self.http is not None
        ids = []
        for path in self.attach:
            try:
                content = await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                self._note(f"Cannot read {path}: {exc.strerror or exc}")
                return EXIT_USAGE
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            try:
                response = await self.http.post(
                    f"{self.base_url}/attachments/",
                    headers={**self.headers, "Accept": "application/json"},
                    files={"file": (path.name, content, kind)},
                )
            except httpx2.HTTPError as exc:
                self._note(f"Could not upload {path}: {exc}")
                return EXIT_NETWORK
            if response.status_code == 401:
                return self._unauthenticated()
            try:
                payload = response.json()
            except ValueError:
                payload = {}
            if response.status_code != 201:
                error = payload.get("error") or {}
                message = error.get("message") or f"HTTP {response.status_code}"
                self._note(f"{path} was refused: {message} ({error.get('code', '')})")
                return EXIT_REFUSED
            attachment = payload["attachment"]
            ids.append(attachment["id"])
            self._note(
                f"[attached {path} as {attachment['id']} "
                f"({attachment['width']}x{attachment['height']})]"
            )
        self.attachment_ids = ids
        return None

    # --- images ----------------------------------------------------------------

    def _download(
        self,
        image_id: str,
        path: str,
        width: int | None = None,
        height: int | None = None,
        *,
        edited_from: list[str] | None = None,
    ) -> None:
        """Fetch in the background, so that the text keeps streaming meanwhile.

        Every image of a call is saved (one file per image id); an edit's note
        names the images it was edited from.
        """
        if image_id not in self.images:
            size = f" ({width}x{height})" if width and height else ""
            if edited_from:
                size += f", edited from {', '.join(edited_from)}"
            self.images[image_id] = asyncio.create_task(self._fetch(image_id, path, size))

    async def _fetch(self, image_id: str, path: str, size: str) -> None:
        assert self.http is not None
        url = urljoin(self.base_url + "/", path)
        try:
            response = await self.http.get(url, headers=self.headers)
            # Redirects by hand: the target (a presigned storage URL) carries its own
            # signature and must not get our token (S3 refuses two auth mechanisms).
            for _ in range(MAX_REDIRECTS):
                if not response.is_redirect:
                    break
                response = await self.http.get(urljoin(url, response.headers["location"]))
            response.raise_for_status()
            content_type = response.headers.get("content-type", "").split(";")[0].strip()
            extension = EXTENSIONS.get(content_type) or (
                mimetypes.guess_extension(content_type) or ".bin"
            ).lstrip(".")
            target = self.images_dir / f"{image_id}.{extension}"
            await asyncio.to_thread(_save, target, response.content)
        except (httpx2.HTTPError, OSError) as exc:
            self._note(f"[image failed: could not download {url}: {exc}]")
            return
        self._note(f"[image saved: {target}{size}]")

    # --- output ----------------------------------------------------------------

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()  # a token at a time, not a buffer at a time
        self.midline = not text.endswith("\n")

    def _note(self, text: str) -> None:
        # On a terminal, stdout and stderr share the screen: start the note on its own
        # line rather than glued to a half-printed sentence.
        if self.midline and self.out.isatty() and self.err.isatty():
            self.err.write("\n")
            self.midline = False
        self.err.write(f"{text}\n")
        self.err.flush()


def _save(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)


async def run(
    prompt: str,
    *,
    url: str = DEFAULT_URL,
    token: str,
    conversation_id: str | None = None,
    images_dir: Path | str = DEFAULT_IMAGES_DIR,
    out: TextIO | None = None,
    err: TextIO | None = None,
    raw: bool = False,
    continue_answer: bool = False,
    attach: list[Path] | None = None,
    edit: bool = False,
) -> int:
    """Send `prompt` (or continue the last answer), stream the answer to `out`, save its
    images; returns an exit code."""
    session = ChatSession(
        prompt,
        url=url,
        token=token,
        conversation_id=conversation_id,
        images_dir=images_dir,
        out=out,
        err=err,
        raw=raw,
        continue_answer=continue_answer,
        attach=attach,
        edit=edit,
    )
    return await session.run()
