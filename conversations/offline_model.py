"""The built-in "offline model": a tiny OpenAI-compatible HTTP server.

It exists so that three things work without any network or API key:

* the app's embedded default model (``make run`` with no key configured),
* the test suite, which talks to it over real HTTP with the real ``openai`` client, so
  the exact wire format (SSE chunks, tool-call deltas, error bodies, retry headers) is
  exercised rather than mocked, and
* benchmarks, which run it as a separate process (see ``python -m conversations.offline_model``).

Only the standard library and Pillow are used, and Django is deliberately not imported so
the module is importable before (or without) settings.

Unscripted behaviour is deterministic: the same messages always produce the same reply and
the same prompt always produces the same PNG bytes. Tests and benchmarks can queue scripted
responses (``Reply``, ``Fail``, ``Hang``, ``ImageReply``) that are consumed one per request.
"""

from __future__ import annotations

import argparse
import base64
import colorsys
import functools
import hashlib
import io
import json
import math
import random
import re
import secrets
import signal
import socketserver
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CHAT_MODEL",
    "IMAGE_MODEL",
    "IMAGE_SIZES",
    "Fail",
    "Hang",
    "ImageReply",
    "OfflineModelServer",
    "RecordedRequest",
    "Reply",
    "ToolCall",
    "render_image",
]

CHAT_MODEL = "offline-chat"
IMAGE_MODEL = "offline-image"

#: Sizes the images endpoint accepts (the union of what OpenAI's image models accept).
IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "256x256": (256, 256),
    "512x512": (512, 512),
    "1024x1024": (1024, 1024),
    "1024x1536": (1024, 1536),
    "1536x1024": (1536, 1024),
    "1024x1792": (1024, 1792),
    "1792x1024": (1792, 1024),
    "auto": (1024, 1024),
}
DEFAULT_IMAGE_SIZE = "1024x1024"

# URL-format images are kept in memory; cap them so a long benchmark run can't grow forever.
_MAX_STORED_FILES = 256

RGB = tuple[int, int, int]


# --------------------------------------------------------------------------------------
# Scripting vocabulary
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """A tool call the scripted assistant turn should make."""

    name: str = "generate_image"
    arguments: dict[str, Any] | str = field(
        default_factory=lambda: {"prompt": "a red kite over green hills"}
    )
    #: Fixed ``call_…`` id; a random one is generated when omitted.
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """A scripted assistant turn: streamed ``text`` (or exact ``tokens``), then tool calls.

    ``first_token_delay`` / ``token_delay`` override the server's defaults when not None.
    ``cut_after=N`` sends N content chunks and then drops the connection without ``[DONE]``.
    ``usage=False`` suppresses the usage chunk even if the client asked for one, because some
    OpenAI-compatible providers never send it.
    ``framing="crlf-split"`` frames events as other servers may: CRLF line ends, a comment
    and an ``event:`` line before each ``data:``, raw UTF-8 in the JSON, and every event
    cut in two HTTP chunks (through a multi-byte character when it has one).
    ``finish_reason`` overrides the ending ("length", "content_filter", …).
    """

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    first_token_delay: float | None = None
    token_delay: float | None = None
    cut_after: int | None = None
    usage: bool = True
    tokens: list[str] | None = None
    framing: str = "lf"
    finish_reason: str | None = None


@dataclass(frozen=True)
class Fail:
    """Answer the request with an OpenAI-style error (optionally after ``delay`` seconds)."""

    status: int = 500
    message: str = "The server had an error while processing your request."
    code: str | None = None
    type: str = "server_error"
    #: Seconds to advertise in a ``retry-after`` header (the openai client honours it).
    retry_after: float | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Accept the request, send nothing for ``seconds``, then close the connection."""

    seconds: float


@dataclass(frozen=True)
class ImageReply:
    """A scripted image response.

    ``response_format`` None means "whatever the request asked for" (default ``b64_json``).
    ``prompt_override`` renders a different prompt than the one requested.
    ``url`` answers with that URL instead of one of this server's (a provider
    hosting its images elsewhere, or one pointing the app at an address it must
    not fetch).
    """

    response_format: str | None = None
    revised_prompt: str | None = None
    delay: float = 0.0
    prompt_override: str | None = None
    url: str | None = None


ChatScript = Reply | Fail | Hang
ImageScript = ImageReply | Fail | Hang


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it. Header names are lower-cased for easy lookup."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    query: str = ""  # the URL's query string, e.g. Azure's api-version


# --------------------------------------------------------------------------------------
# Default (unscripted) chat behaviour
# --------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\S+\s*|\s+")
_VERBS = r"draw|paint|sketch|illustrate"  # not "render": "how does Django render…"
_NOUNS = r"picture|image|illustration|photo|photograph|drawing|painting|sketch|portrait|artwork"
# Deliberately loose: this is a demo model, and a false positive just draws a picture.
_PICTURE_REQUEST_RE = re.compile(
    rf"\b(?:{_VERBS})\b"
    rf"|\b(?:{_NOUNS})s?\s+(?:of|showing|depicting)\b"
    rf"|\b(?:generate|create|make|show|give|send)\b(?:\s+\S+){{0,3}}?\s+(?:{_NOUNS})s?\b",
    re.IGNORECASE,
)
_SUBJECT_AFTER_NOUN_RE = re.compile(
    rf"\b(?:{_NOUNS})s?\s+(?:of|showing|depicting)\s+(?P<subject>.+)", re.IGNORECASE | re.DOTALL
)
_SUBJECT_AFTER_VERB_RE = re.compile(
    r"^(?:(?:please|hey|ok(?:ay)?|now|so|can|could|would|will|you|i'd|i\s+would|like|"
    r"want|to|i|me|for)[\s,]+)*"
    rf"(?:{_VERBS}|generate|create|make|show|give|send)\s+(?:(?:me|us)\s+)?(?P<subject>.+)",
    re.IGNORECASE | re.DOTALL,
)
_EXAMPLE_PROMPTS = (
    "a lighthouse at dusk",
    "a fox in a snowy forest",
    "a red sailboat on a calm sea",
    "a city skyline at night",
)


def _text_of(content: Any) -> str:
    """Flatten message ``content``, which may be a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return " ".join(p for p in parts if p)
    return ""


def _squash(text: str) -> str:
    return " ".join(text.split())


def _shorten(text: str, limit: int) -> str:
    text = _squash(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def wants_picture(text: str) -> bool:
    """Whether a user message reads like a request for an image."""
    return bool(_PICTURE_REQUEST_RE.search(text))


def picture_subject(text: str) -> str:
    """Strip the request phrasing: "Please draw me a lighthouse at dusk!" -> "a lighthouse…"."""
    text = _squash(text).rstrip(" .!?")
    match = _SUBJECT_AFTER_NOUN_RE.search(text) or _SUBJECT_AFTER_VERB_RE.match(text)
    subject = match.group("subject").strip(" .!?") if match else text
    subject = re.sub(r"[\s,]+(?:for\s+(?:me|us)|please)$", "", subject, flags=re.IGNORECASE)
    return _shorten(subject or text, 300)


def _offers_tool(body: dict[str, Any], name: str) -> bool:
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and (tool.get("function") or {}).get("name") == name:
            return True
    return False


def _follow_up(tool_content: str) -> str:
    """The sentence the model says after the app returns a generate_image result."""
    try:
        data = json.loads(tool_content)
    except (TypeError, ValueError):
        data = None
    if not isinstance(data, dict):
        return f"The tool replied: {_shorten(tool_content, 200) or '(nothing)'}"
    if data.get("status") == "error" or "error" in data:
        reason = data.get("error") or "something went wrong"
        return f"Sorry, I couldn't make that image: {reason}"
    prompt = data.get("prompt") or data.get("revised_prompt")
    if prompt:
        return f"Here is your picture of {prompt}. Ask me for changes or another one."
    return "Here is your picture. Ask me for changes or another one."


def _default_reply(messages: list[Any]) -> str:
    user_text = ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            user_text = _text_of(message.get("content"))
            break
    digest = hashlib.sha256(user_text.encode()).digest()
    example = _EXAMPLE_PROMPTS[digest[0] % len(_EXAMPLE_PROMPTS)]
    if not user_text.strip():
        return (
            "Hello! I'm the **built-in offline model**, running without any API key. "
            f'Ask me to *draw* something, like **"draw {example}"**.'
        )
    return (
        f"I'm the **built-in offline model**, so I can't really chat, but I heard you say "
        f'"{_shorten(re.sub(r"[*_`]+", "", user_text), 80)}". '
        f'Try asking me to *draw* something, like **"draw {example}"**, '
        "and I'll make a picture for you."
    )


def plan_chat(body: dict[str, Any]) -> Reply:
    """Decide the unscripted reply for a chat request (pure function, easy to test)."""
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        # Several trailing tool messages happen with parallel tool calls; answer each.
        results: list[str] = []
        for message in reversed(messages):
            if not isinstance(message, dict) or message.get("role") != "tool":
                break
            results.append(_follow_up(_text_of(message.get("content"))))
        return Reply(text=" ".join(reversed(results)))
    user_text = ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            user_text = _text_of(message.get("content"))
            break
    if user_text and wants_picture(user_text) and _offers_tool(body, "generate_image"):
        subject = picture_subject(user_text)
        return Reply(
            text=f"Sure, let me draw {subject}.",
            tool_calls=[ToolCall("generate_image", {"prompt": subject})],
        )
    return Reply(text=_default_reply(messages))


def tokenize(text: str) -> list[str]:
    """Word-like streaming tokens; joining them gives back ``text`` exactly."""
    return _TOKEN_RE.findall(text)


def _fragments(arguments: str) -> list[str]:
    """Split tool-call arguments into 2+ pieces, like OpenAI streams them."""
    if len(arguments) < 2:
        return [arguments] if arguments else []
    count = max(2, math.ceil(len(arguments) / 12))
    size = math.ceil(len(arguments) / count)
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def _rough_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


# --------------------------------------------------------------------------------------
# Image rendering
# --------------------------------------------------------------------------------------

# Words that set the mood of the background gradient (top colour first).
_MOOD_COLOURS: dict[str, tuple[RGB, ...]] = {
    "dusk": ((255, 140, 66), (142, 68, 173)),
    "sunset": ((255, 120, 60), (120, 50, 140)),
    "sunrise": ((255, 190, 110), (250, 120, 140)),
    "dawn": ((255, 200, 150), (160, 140, 210)),
    "night": ((8, 14, 48), (40, 30, 90)),
    "midnight": ((5, 8, 30), (25, 25, 70)),
    "starry": ((8, 14, 48), (40, 30, 90)),
    "space": ((5, 5, 15), (60, 20, 90)),
    "forest": ((80, 160, 80), (10, 70, 30)),
    "jungle": ((60, 170, 60), (5, 60, 20)),
    "woods": ((90, 140, 70), (30, 60, 25)),
    "trees": ((110, 170, 90), (20, 80, 35)),
    "meadow": ((150, 210, 120), (60, 140, 60)),
    "ocean": ((0, 105, 148), (0, 40, 90)),
    "sea": ((40, 140, 190), (0, 50, 100)),
    "lake": ((110, 180, 210), (20, 80, 130)),
    "river": ((100, 170, 200), (30, 90, 120)),
    "beach": ((90, 190, 230), (240, 220, 170)),
    "snow": ((250, 250, 255), (190, 215, 240)),
    "snowy": ((250, 250, 255), (190, 215, 240)),
    "winter": ((230, 240, 250), (160, 190, 220)),
    "ice": ((220, 245, 255), (140, 200, 230)),
    "fire": ((255, 200, 40), (200, 30, 20)),
    "lava": ((255, 120, 0), (120, 10, 10)),
    "volcano": ((255, 110, 30), (60, 20, 20)),
    "desert": ((250, 220, 160), (200, 140, 80)),
    "autumn": ((250, 170, 60), (170, 60, 30)),
    "sky": ((120, 190, 240), (225, 240, 255)),
}
_COLOUR_NAMES: dict[str, RGB] = {
    "red": (215, 40, 45),
    "orange": (255, 140, 0),
    "yellow": (250, 215, 50),
    "green": (50, 170, 70),
    "blue": (40, 90, 220),
    "purple": (130, 60, 180),
    "violet": (140, 80, 200),
    "pink": (245, 130, 180),
    "magenta": (210, 40, 160),
    "white": (245, 245, 245),
    "black": (20, 20, 25),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "brown": (120, 75, 40),
    "gold": (212, 175, 55),
    "golden": (212, 175, 55),
    "silver": (192, 192, 200),
    "teal": (0, 128, 128),
    "cyan": (0, 200, 220),
    "turquoise": (64, 224, 208),
}


def _hash_colour(rng: random.Random, lightness: float) -> RGB:
    r, g, b = colorsys.hls_to_rgb(rng.random(), lightness, rng.uniform(0.45, 0.85))
    return round(r * 255), round(g * 255), round(b * 255)


def _shade(colour: RGB, factor: float) -> RGB:
    """factor > 1 lightens towards white, < 1 darkens towards black."""
    if factor >= 1:
        return tuple(round(c + (255 - c) * (factor - 1)) for c in colour)  # type: ignore[return-value]
    return tuple(round(c * factor) for c in colour)  # type: ignore[return-value]


def _palette(prompt: str, rng: random.Random) -> list[RGB]:
    """Gradient stops: mood words first, then plain colour names, else hash-derived."""
    stops: list[RGB] = []
    for word in re.findall(r"[a-z]+", prompt.lower()):
        for colour in _MOOD_COLOURS.get(word, ()) or (
            (_COLOUR_NAMES[word],) if word in _COLOUR_NAMES else ()
        ):
            if colour not in stops:
                stops.append(colour)
    if not stops:
        stops = [_hash_colour(rng, 0.65), _hash_colour(rng, 0.3)]
    elif len(stops) == 1:
        stops = [_shade(stops[0], 1.35), _shade(stops[0], 0.55)]
    return stops[:3]


def _gradient(stops: list[RGB], width: int, height: int) -> Image.Image:
    # Build one 1-pixel column and stretch it: far faster than drawing H lines.
    column = bytearray()
    segments = len(stops) - 1
    for y in range(height):
        position = y / max(1, height - 1) * segments
        index = min(int(position), segments - 1)
        t = position - index
        a, b = stops[index], stops[index + 1]
        column += bytes(round(a[i] + (b[i] - a[i]) * t) for i in range(3))
    strip = Image.frombytes("RGB", (1, height), bytes(column))
    return strip.resize((width, height), Image.Resampling.NEAREST)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow >= 10.1 ships a scalable default font (needs FreeType, which wheels include).
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: Any, max_width: float, max_lines: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= max_width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + "..."
    # Hard-cut anything still too wide (one enormous word).
    fitted = []
    for line in lines:
        while len(line) > 4 and font.getlength(line) > max_width:
            line = line[:-4] + "..."
        fitted.append(line)
    return fitted


def render_image(prompt: str, width: int, height: int) -> bytes:
    """Render a deterministic PNG for ``prompt``: same prompt and size, same bytes."""
    rng = random.Random(int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big"))
    stops = _palette(prompt, rng)
    image = _gradient(stops, width, height)
    # Drawing in "RGBA" mode on an RGB image blends each translucent shape as it goes.
    draw = ImageDraw.Draw(image, "RGBA")
    shortest = min(width, height)
    accents = [*stops, _hash_colour(rng, 0.55), _hash_colour(rng, 0.75), (250, 250, 250)]
    for _ in range(rng.randint(6, 10)):
        base = rng.choice(accents)
        fill = (*(max(0, min(255, c + rng.randint(-30, 30))) for c in base), rng.randint(90, 190))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height * 0.8)
        radius = rng.uniform(0.05, 0.22) * shortest
        kind = rng.choice(("circle", "rect", "polygon"))
        if kind == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        elif kind == "rect":
            w, h = radius * rng.uniform(0.8, 2.2), radius * rng.uniform(0.5, 1.6)
            draw.rounded_rectangle((cx - w, cy - h, cx + w, cy + h), radius=radius * 0.2, fill=fill)
        else:
            sides = rng.randint(3, 6)
            turn = rng.uniform(0, math.tau)
            points = [
                (
                    cx + radius * rng.uniform(0.7, 1.1) * math.cos(turn + math.tau * k / sides),
                    cy + radius * rng.uniform(0.7, 1.1) * math.sin(turn + math.tau * k / sides),
                )
                for k in range(sides)
            ]
            draw.polygon(points, fill=fill)

    # The prompt itself, on a translucent band so it stays legible on any background.
    font = _font(max(12, round(shortest / 18)))
    margin = round(shortest * 0.05)
    lines = _wrap(_squash(prompt) or "untitled", font, width - 2 * margin, max_lines=3)
    line_height = round(font.size * 1.25) if hasattr(font, "size") else 14
    band_height = line_height * len(lines) + margin
    band_top = height - band_height - margin
    draw.rectangle((0, band_top, width, band_top + band_height), fill=(0, 0, 0, 140))
    y = band_top + margin // 2
    for line in lines:
        draw.text((margin + 2, y + 2), line, font=font, fill=(0, 0, 0, 160))
        draw.text((margin, y), line, font=font, fill=(255, 255, 255, 255))
        y += line_height

    buffer = io.BytesIO()
    # Level 1 keeps a 1024x1024 encode at a few ms; the flat shapes compress well anyway.
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def parse_size(size: Any) -> tuple[int, int]:
    """Map an OpenAI ``size`` value to pixels; raises ValueError for unsupported sizes."""
    if size is None:
        return IMAGE_SIZES[DEFAULT_IMAGE_SIZE]
    if isinstance(size, str) and size in IMAGE_SIZES:
        return IMAGE_SIZES[size]
    raise ValueError(size)


# --------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------


class _StreamCut(Exception):
    """Raised inside a handler to abandon a response mid-way (scripted ``cut_after``)."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Benchmarks open many connections at once; the default backlog of 5 drops SYNs.
    request_queue_size = 128
    model: OfflineModelServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse-DNS lookup that can stall
        # for seconds in sandboxes without DNS. We never need the name, so skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "OfflineModel/1.0"
    sys_version = ""
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; tests and benchmarks would drown in it."""

    # -- entry points -------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            self._route(method)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, _StreamCut):
            # The client went away (or we cut the stream on purpose): nothing to report.
            self.close_connection = True

    def _route(self, method: str) -> None:
        model = self.server.model
        path, _, query = self.path.partition("?")
        raw = self._read_body() if method == "POST" else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        headers = {key.lower(): value for key, value in self.headers.items()}
        model._record(RecordedRequest(method, path, headers, body, query))

        # Any prefix: /v1/… as OpenAI, /openai/deployments/<name>/… as Azure's
        # api-version endpoints.
        if method == "POST" and path.endswith("/chat/completions"):
            self._chat(body, raw)
        elif method == "POST" and path.endswith("/images/generations"):
            self._images(body, raw)
        elif method == "GET" and path == "/v1/models":
            data = [
                {"id": name, "object": "model", "created": 0, "owned_by": "offline"}
                for name in (CHAT_MODEL, IMAGE_MODEL)
            ]
            self._send_json(200, {"object": "list", "data": data})
        elif method == "GET" and path.startswith("/files/"):
            content = model._file(path.removeprefix("/files/"))
            if content is None:
                self._send_error(404, "No such file.", "invalid_request_error", "not_found")
            else:
                self._send_bytes(200, content, "image/png")
        else:
            self._send_error(
                404,
                f"Unknown request URL: {method} {path}.",
                "invalid_request_error",
                "unknown_url",
            )

    # -- request / response helpers -----------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_bytes(
        self, status: int, content: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("x-request-id", f"req_{secrets.token_hex(8)}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(content)
        self.wfile.flush()

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_error(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        error = {"message": message, "type": type_, "code": code, "param": param}
        self._send_json(status, {"error": error}, headers)

    def _send_fail(self, fail: Fail) -> None:
        self.server.model._sleep(fail.delay)
        headers = {}
        if fail.retry_after is not None:
            headers["retry-after"] = f"{fail.retry_after:g}"
        self._send_error(fail.status, fail.message, fail.type, fail.code, headers=headers)

    def _hang(self, hang: Hang) -> None:
        self.server.model._sleep(hang.seconds)
        self.close_connection = True

    # SSE is sent with chunked transfer-encoding. With a close-delimited body a dropped
    # connection is indistinguishable from a clean end, so a cut stream would go unnoticed.
    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", f"req_{secrets.token_hex(8)}")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True

    framing = "lf"

    def _send_event(self, data: str) -> None:
        if self.framing != "crlf-split":
            payload = f"data: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            self.wfile.flush()
            return
        payload = f": keep-alive\r\nevent: message\r\ndata: {data}\r\n\r\n".encode()
        wide = re.search(rb"[\xc0-\xff]", payload)
        cut = wide.start() + 1 if wide else len(payload) // 2
        for index, part in enumerate((payload[:cut], payload[cut:])):
            if index:
                self.server.model._sleep(0.002)  # the halves arrive in separate reads
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()

    def _end_stream(self) -> None:
        self._send_event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- chat ---------------------------------------------------------------------------

    def _chat(self, body: dict[str, Any] | None, raw: bytes) -> None:
        model = self.server.model
        if body is None or not isinstance(body.get("messages"), list):
            self._send_error(400, "'messages' is a required property.", param="messages")
            return
        script = model._next_chat()
        if isinstance(script, Fail):
            self._send_fail(script)
            return
        if isinstance(script, Hang):
            self._hang(script)
            return
        reply = script or plan_chat(body)
        tokens = reply.tokens if reply.tokens is not None else tokenize(reply.text)
        first_delay = (
            model.first_token_delay if reply.first_token_delay is None else reply.first_token_delay
        )
        token_delay = model.token_delay if reply.token_delay is None else reply.token_delay
        calls = [
            (
                call.id or f"call_{secrets.token_hex(12)}",
                call.name,
                call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments),
            )
            for call in reply.tool_calls
        ]
        finish_reason = reply.finish_reason or ("tool_calls" if calls else "stop")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(tokens):
            # As real servers do: stop at the limit, mid-sentence, and say so.
            tokens, calls, finish_reason = tokens[:limit], [], "length"
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        model_name = str(body.get("model") or CHAT_MODEL)
        prompt_tokens = _rough_tokens(raw.decode("utf-8", "replace"))
        completion_tokens = len(tokens) + sum(len(_fragments(args)) + 1 for *_, args in calls)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

        if not body.get("stream"):
            # Simulate the generation time the stream would have taken.
            model._sleep(first_delay + token_delay * max(0, completion_tokens - 1))
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(tokens) or None,
                "refusal": None,
            }
            if calls:
                message["tool_calls"] = [
                    {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                    for cid, name, args in calls
                ]
            payload = {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": usage,
            }
            if reply.cut_after is not None:
                # Promise the whole body, deliver half of it, hang up.
                content = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content[: len(content) // 2])
                self.wfile.flush()
                raise _StreamCut
            self._send_json(200, payload)
            return

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        created = int(time.time())

        self.framing = reply.framing

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                data["usage"] = None  # OpenAI sends an explicit null until the final chunk
            return json.dumps(data, ensure_ascii=self.framing == "lf")

        def deltas() -> Iterator[dict[str, Any]]:
            for token in tokens:
                yield {"content": token}
            for index, (cid, name, args) in enumerate(calls):
                yield {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": cid,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
                for piece in _fragments(args):
                    yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}

        self._start_stream()
        self._send_event(chunk({"role": "assistant", "content": "", "refusal": None}))
        model._sleep(first_delay)
        sent_content = 0
        for position, delta in enumerate(deltas()):
            if reply.cut_after is not None and (
                sent_content >= reply.cut_after or "content" not in delta
            ):
                raise _StreamCut  # hang up: no terminating chunk, no [DONE]
            if position:
                model._sleep(token_delay)
            self._send_event(chunk(delta))
            sent_content += "content" in delta
        if reply.cut_after is not None:
            raise _StreamCut
        self._send_event(chunk({}, finish_reason))
        if include_usage and reply.usage:
            final = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "system_fingerprint": None,
                "choices": [],
                "usage": usage,
            }
            self._send_event(json.dumps(final))
        self._end_stream()

    # -- images -------------------------------------------------------------------------

    def _images(self, body: dict[str, Any] | None, raw: bytes) -> None:
        model = self.server.model
        script = model._next_image()
        if isinstance(script, Fail):
            self._send_fail(script)
            return
        if isinstance(script, Hang):
            self._hang(script)
            return
        reply = script or ImageReply()
        if body is None or not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            self._send_error(400, "'prompt' is a required property.", param="prompt")
            return
        try:
            width, height = parse_size(body.get("size"))
        except ValueError:
            allowed = ", ".join(repr(size) for size in IMAGE_SIZES)
            self._send_error(
                400,
                f"Invalid value: {body.get('size')!r}. Supported values are: {allowed}.",
                code="invalid_value",
                param="size",
            )
            return
        count = body.get("n") or 1
        if not isinstance(count, int) or not 1 <= count <= 10:
            self._send_error(
                400, "'n' must be between 1 and 10.", "invalid_request_error", "invalid_value", "n"
            )
            return
        response_format = reply.response_format or body.get("response_format") or "b64_json"
        if response_format not in ("b64_json", "url"):
            self._send_error(
                400,
                f"Invalid value: {response_format!r}. Supported values are: 'url' and 'b64_json'.",
                code="invalid_value",
                param="response_format",
            )
            return
        model._sleep(reply.delay)
        prompt = reply.prompt_override or body["prompt"]
        host = self.headers.get("Host") or f"{model.public_host}:{model.port}"
        data = []
        for index in range(count):
            # Extra images in one request get their own look; the first is the canonical one.
            png = render_image(prompt if index == 0 else f"{prompt}\n#{index}", width, height)
            item: dict[str, Any]
            if reply.url is not None:
                item = {"url": reply.url}
            elif response_format == "url":
                item = {"url": f"http://{host}/files/{model._store_file(png)}"}
            else:
                item = {"b64_json": base64.b64encode(png).decode("ascii")}
            if reply.revised_prompt is not None:
                item["revised_prompt"] = reply.revised_prompt
            data.append(item)
        self._send_json(
            200,
            {
                "created": int(time.time()),
                "data": data,
                "output_format": "png",
                "size": f"{width}x{height}",
            },
        )


# --------------------------------------------------------------------------------------
# The server object
# --------------------------------------------------------------------------------------


class OfflineModelServer:
    """An OpenAI-compatible server on a background daemon thread.

    >>> with OfflineModelServer() as server:                      # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="offline")
    """

    # Subclasses (bench/fake.py) swap in a handler that records more.
    server_class: type[_HTTPServer] = _HTTPServer
    handler_class: type[_Handler] = _Handler

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self.token_delay = token_delay
        self.first_token_delay = first_token_delay
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._chat_script: deque[ChatScript] = deque()
        self._image_script: deque[ImageScript] = deque()
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        """Bind (port 0 picks a free port) and serve on a daemon thread."""
        if self._httpd is not None:
            return self
        self._stopping = threading.Event()
        httpd = self.server_class((self.host, self.port), self.handler_class)
        httpd.model = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"offline-model:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and wake any request that is sleeping or hanging."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def public_host(self) -> str:
        """The host clients should dial (a wildcard bind is reachable on loopback)."""
        return "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host  # noqa: S104

    @property
    def base_url(self) -> str:
        return f"http://{self.public_host}:{self.port}/v1"

    # -- scripting ----------------------------------------------------------------------

    def script_chat(self, *items: ChatScript) -> None:
        """Queue responses for the next chat requests (one item per request, FIFO)."""
        with self._lock:
            self._chat_script.extend(items)

    def script_images(self, *items: ImageScript) -> None:
        """Queue responses for the next image requests (one item per request, FIFO)."""
        with self._lock:
            self._image_script.extend(items)

    def reset(self) -> None:
        """Forget scripts, recorded requests and stored files."""
        with self._lock:
            self._chat_script.clear()
            self._image_script.clear()
            self._requests.clear()
            self._files.clear()

    # -- recorded requests --------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def image_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/images/generations")]

    # -- used by the handler ------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_chat(self) -> ChatScript | None:
        with self._lock:
            return self._chat_script.popleft() if self._chat_script else None

    def _next_image(self) -> ImageScript | None:
        with self._lock:
            return self._image_script.popleft() if self._image_script else None

    def _store_file(self, content: bytes) -> str:
        name = f"{secrets.token_hex(16)}.png"
        with self._lock:
            self._files[name] = content
            while len(self._files) > _MAX_STORED_FILES:
                self._files.popitem(last=False)
        return name

    def _file(self, name: str) -> bytes | None:
        with self._lock:
            return self._files.get(name)

    def _sleep(self, seconds: float) -> None:
        # Like time.sleep (each request has its own thread) but cut short by stop(), so a
        # Hang(60) in a test doesn't keep a thread alive after the server is gone.
        if seconds > 0:
            self._stopping.wait(seconds)


# --------------------------------------------------------------------------------------
# CLI: python -m conversations.offline_model
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the built-in offline model server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    server = OfflineModelServer(
        args.host,
        args.port,
        token_delay=args.token_delay,
        first_token_delay=args.first_token_delay,
    )
    # SIGTERM as well as Ctrl-C: a process started in the background by a shell
    # has SIGINT ignored, and process managers stop servers with SIGTERM. The
    # handler goes in before the address is printed: whoever read it may stop us.
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server.start()
    print(server.base_url, flush=True)
    try:
        stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
