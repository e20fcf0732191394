"""The OpenAI fake for benchmarks: ``offline_model`` plus timestamps.

Run it in its own process (so it takes no CPU from the measured daphne's GIL):

    .venv/bin/python -m bench.fake --port 0 --ready-file /tmp/fake.url

It answers a streamed chat request whose last user message is
``bench tokens=N delay=D id=X`` with exactly ``bench.common.reply_tokens(N)``, one
SSE chunk per token, D seconds apart, paced on an absolute schedule (a late chunk
does not push the later ones back, so the stream keeps its nominal rate). Anything
else (such as the app's title request) gets the offline model's usual reply.

``bench tokens=N delay=D ttft=T id=X`` also waits T seconds before the first token
(the upstream's own time to first token; the seed comparison used 0.2 s).

``bench image id=X`` is answered with one ``generate_image`` tool call whose prompt
is ``bench image id=X``; the image request with that prompt gets a PNG rendered
for it (distinct bytes per id, so the app's per-user dedup never skips an upload),
and the time just before its response bytes are written is recorded as
``image_ready`` (after the render: the provider's bytes are then available).
The offline renderer's flat gradients compress to about 40 KB; a provider's
1024x1024 PNG is 1.5-3 MB, so bench images get 10 % noise (about 2.1 MB).

For every bench request it records, by id, the wall-clock time (``time.time()``)
at which the request arrived and just before each content chunk was written.
``GET /bench/stamps`` returns them as JSON; ``POST /bench/reset`` forgets them.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import IMAGE_MARKER_RE, MARKER_RE, reply_tokens
from offline_model import (
    ChatScript,
    Handler,
    ImageScript,
    OfflineModelServer,
    Reply,
    ToolCall,
    last_user_text,
    render_image,
)


@dataclass
class Record:
    tokens: int
    arrived: float
    content_events: int = 0
    events: int = 0
    times: list[float] = field(default_factory=list)
    # Image requests: just before the response bytes were written, and after.
    image_ready: float | None = None
    image_sent: float | None = None
    image_response_bytes: int = 0


class BenchModelServer(OfflineModelServer):
    """The offline model serving with ``BenchHandler``, holding the stamps by id."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, token_delay: float = 0.0) -> None:
        # Hundreds of streams connect at once in the sweep.
        super().__init__(host, port, token_delay=token_delay, handler=BenchHandler, backlog=2048)
        self.stamp_lock = threading.Lock()
        self.stamps: dict[str, Record] = {}


class BenchHandler(Handler):
    """The offline model's handler with bench markers, timestamps and absolute pacing.

    One instance serves one connection (on its own thread), so the per-request state
    below is the current request's.
    """

    _reply: Reply | None = None  # this request's marker reply
    _deadline: float | None = None  # the pacing schedule's next tick (time.monotonic)
    _bench: Record | None = None  # this chat request's stamps
    _image: Record | None = None  # this image request's stamps

    @property
    def bench(self) -> BenchModelServer:
        assert isinstance(self.model, BenchModelServer)
        return self.model

    def extra_route(self, method: str, path: str, body: dict[str, Any] | None) -> bool:
        if method == "GET" and path.startswith("/bench/stamps"):
            with self.bench.stamp_lock:
                payload = {
                    key: {
                        "arrived": rec.arrived,
                        "times": rec.times,
                        "image_ready": rec.image_ready,
                        "image_sent": rec.image_sent,
                        "image_response_bytes": rec.image_response_bytes,
                    }
                    for key, rec in self.bench.stamps.items()
                }
            self.send_json(200, payload)
            return True
        if method == "POST" and path.startswith("/bench/reset"):
            with self.bench.stamp_lock:
                self.bench.stamps.clear()
            self.send_json(200, {"ok": True})
            return True
        return False

    def chat_script(self, body: dict[str, Any]) -> ChatScript | None:
        arrived = time.time()
        self._deadline = time.monotonic()
        self._bench = None
        messages = body.get("messages") or []
        user_text = last_user_text(messages)
        last_role = messages[-1].get("role") if messages and isinstance(messages[-1], dict) else ""
        # Only a streamed chat whose user text *is* a marker: the app's title request
        # quotes the user text ("User: bench tokens=...") and must not be taken for it.
        match = MARKER_RE.match(user_text.strip())
        image = IMAGE_MARKER_RE.fullmatch(user_text.strip())
        if image and last_role == "user" and body.get("stream"):
            # One tool call; the round after it (last message: the tool result) gets
            # the offline model's usual follow-up sentence.
            return Reply(
                text="Drawing it.",
                tool_calls=[ToolCall("generate_image", {"prompt": user_text.strip()})],
            )
        if match and body.get("stream"):
            count, delay = int(match["tokens"]), float(match["delay"])
            ttft = float(match["ttft"]) if match["ttft"] else None
            record = Record(tokens=count, arrived=arrived)
            self._bench = record
            with self.bench.stamp_lock:
                self.bench.stamps[match["id"]] = record
            return Reply(
                tokens=list(reply_tokens(count)), token_delay=delay, first_token_delay=ttft
            )
        return super().chat_script(body)

    def before_event(self, data: str) -> None:
        record = self._bench
        if record is not None:
            # Event 1 is the role chunk ("content": ""); events 2..N+1 carry the tokens.
            record.events += 1
            if 2 <= record.events <= record.tokens + 1:
                record.times.append(time.time())  # just before the bytes are written

    def pause(self, seconds: float) -> None:
        # Absolute pacing: sleep until the next tick of the schedule started by this
        # connection's latest chat request, so a late chunk does not push the rest back.
        if self._deadline is None:
            super().pause(seconds)
            return
        self._deadline += seconds
        remaining = self._deadline - time.monotonic()
        if remaining > 0:
            super().pause(remaining)

    def image_script(self, body: dict[str, Any] | None) -> ImageScript | None:
        self._image = None
        prompt = (body or {}).get("prompt")
        match = IMAGE_MARKER_RE.fullmatch(prompt.strip()) if isinstance(prompt, str) else None
        if match:
            record = Record(tokens=0, arrived=time.time())
            self._image = record
            with self.bench.stamp_lock:
                self.bench.stamps["image-" + match["id"]] = record
        return super().image_script(body)

    def render(self, prompt: str, width: int, height: int) -> bytes:
        """The offline picture with 10 % noise, for bench prompts: a provider-sized PNG."""
        png = render_image(prompt, width, height)
        if not IMAGE_MARKER_RE.fullmatch(prompt.strip()):
            return png
        from PIL import Image

        base = Image.open(io.BytesIO(png)).convert("RGB")
        noise = Image.frombytes(
            "RGB", base.size, random.Random(prompt).randbytes(3 * width * height)
        )
        buffer = io.BytesIO()
        Image.blend(base, noise, 0.1).save(buffer, "PNG")
        return buffer.getvalue()

    def before_image_response(self, content: bytes) -> None:
        if self._image is not None:
            self._image.image_ready = time.time()  # rendered and encoded: bytes available
            self._image.image_response_bytes = len(content)

    def after_image_response(self, content: bytes) -> None:
        if self._image is not None:
            self._image.image_sent = time.time()
            self._image = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The recording OpenAI fake for benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--ready-file", help="write the base URL here once listening")
    parser.add_argument("--max-seconds", type=float, default=3600, help="exit after this long")
    args = parser.parse_args(argv)
    server = BenchModelServer(args.host, args.port, token_delay=args.token_delay).start()
    if args.ready_file:
        with open(args.ready_file + ".tmp", "w") as out:
            out.write(server.base_url)
        import os

        os.replace(args.ready_file + ".tmp", args.ready_file)
    print(server.base_url, flush=True)
    try:
        time.sleep(args.max_seconds)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    print(json.dumps({"stopped": True}), flush=True)


if __name__ == "__main__":
    main()
