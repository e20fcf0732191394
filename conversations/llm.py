"""Everything that talks to the model provider, and the only importer of `openai`.

Works with any OpenAI-compatible server: it never relies on a usage chunk, on
revised_prompt, or on b64_json being present (a provider `url` is fetched with a
size limit instead). Without an API key it starts the built-in offline model
in this process and talks to it over loopback HTTP with the same client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import threading
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from django.conf import settings


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallRequest:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class StreamEnd:
    finish_reason: str | None
    usage: dict[str, int] = field(default_factory=dict)


StreamEvent = TextDelta | ToolCallRequest | StreamEnd


class LLMError(Exception):
    """A provider failure, typed for the protocol's assistant.failed frame."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class ImageAPIError(Exception):
    """The image could not be generated; `message` is fit to show the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Picture:
    data: bytes
    revised_prompt: str
    model: str


# --- the offline model ------------------------------------------------------------

_offline_lock = threading.Lock()
_offline_server: Any = None


def offline_base_url() -> str:
    """Start the built-in model once per process and return its /v1 URL."""
    global _offline_server
    with _offline_lock:
        if _offline_server is None:
            from conversations.offline_model import OfflineModelServer

            _offline_server = OfflineModelServer(
                token_delay=settings.OFFLINE_TOKEN_DELAY_MS / 1000
            ).start()
        return _offline_server.base_url


def _endpoint(images: bool) -> tuple[str, str | None]:
    if settings.OFFLINE_MODEL:
        return "offline", offline_base_url()
    if images:
        return settings.OPENAI_IMAGE_API_KEY, settings.OPENAI_IMAGE_BASE_URL
    return settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL


# An AsyncOpenAI client holds a connection pool bound to the event loop that
# created it, so keep one per loop (and per endpoint, which tests change).
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, openai.AsyncOpenAI]]
_clients = weakref.WeakKeyDictionary()


def client(*, images: bool = False) -> openai.AsyncOpenAI:
    api_key, base_url = _endpoint(images)
    timeout = settings.IMAGE_TIMEOUT_SECONDS if images else settings.LLM_TIMEOUT_SECONDS
    key = (api_key, base_url, timeout, settings.LLM_MAX_RETRIES)
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    if key not in per_loop:
        per_loop[key] = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=httpx2.Timeout(timeout, connect=10.0),
            # The client retries connection errors, 408/409/429 and 5xx before a
            # stream starts, honouring Retry-After; never once it has started.
            max_retries=settings.LLM_MAX_RETRIES,
            # The SDK's aiohttp transport parses HTTP in C and reads without
            # anyio's per-read cancel scope and socket pause/resume, a cost per
            # token per stream: the largest gain in docs/benchmarks.md.
            http_client=openai.DefaultAioHttpClient(),
        )
    return per_loop[key]


def _llm_error(exc: Exception) -> LLMError:
    if isinstance(exc, openai.RateLimitError):
        return LLMError("upstream_rate_limited", "The model provider is busy.", retryable=True)
    if isinstance(exc, openai.APITimeoutError):
        return LLMError("upstream_timeout", "The model took too long to answer.", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return LLMError("upstream_unavailable", "The model could not be reached.", retryable=True)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return LLMError("upstream_auth", "The model provider refused our key.", retryable=False)
    if isinstance(exc, openai.APIStatusError):
        retryable = exc.status_code >= 500
        return LLMError(
            "upstream_error", f"The model provider failed ({exc.status_code}).", retryable=retryable
        )
    return LLMError("upstream_error", "The model's answer could not be read.", retryable=True)


async def stream_chat(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> AsyncIterator[StreamEvent]:
    """Stream one completion as TextDelta / ToolCallRequest / StreamEnd events.

    The request, its retries and its errors are the SDK's; the SSE stream is
    split (`_sse_data`) and decoded with json.loads here instead of a typed
    model per chunk, which was the SDK's largest cost per token in bench/.
    Tool-call fragments (an id and name, then argument pieces, keyed by index)
    are assembled so callers see whole calls. Closing the generator closes the
    HTTP stream: cancel relies on it.
    """
    kwargs: dict[str, Any] = {
        "model": settings.CHAT_MODEL,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if tools:
        kwargs["tools"] = tools
    request = client().chat.completions.with_streaming_response.create(**kwargs)
    try:
        response = await request.__aenter__()
    except openai.OpenAIError as exc:
        raise _llm_error(exc) from exc
    calls: dict[int, dict[str, str]] = {}
    finish_reason: str | None = None
    usage: dict[str, int] = {}
    try:
        async with contextlib.aclosing(_sse_data(response.iter_bytes())) as payloads:
            async for data in payloads:
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    raise LLMError(
                        "upstream_error", "The model reported an error mid-answer.", retryable=True
                    )
                if chunk.get("usage"):  # not every provider sends it
                    usage = {
                        "prompt_tokens": chunk["usage"].get("prompt_tokens") or 0,
                        "completion_tokens": chunk["usage"].get("completion_tokens") or 0,
                    }
                for choice in (chunk.get("choices") or ())[:1]:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        yield TextDelta(delta["content"])
                    for part in delta.get("tool_calls") or ():
                        call = calls.setdefault(
                            part.get("index", 0), {"id": "", "name": "", "args": ""}
                        )
                        call["id"] = part.get("id") or call["id"]
                        function = part.get("function") or {}
                        call["name"] += function.get("name") or ""
                        call["args"] += function.get("arguments") or ""
                    finish_reason = choice.get("finish_reason") or finish_reason
    except (openai.OpenAIError, httpx2.HTTPError, ValueError) as exc:
        raise LLMError(
            "upstream_stream_cut", "The model's answer was cut off.", retryable=True
        ) from exc
    finally:
        await request.__aexit__(None, None, None)
    for index in sorted(calls):
        call = calls[index]
        yield ToolCallRequest(call["id"] or f"call_{index}", call["name"], call["args"])
    yield StreamEnd(finish_reason, usage)


async def _sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The payloads of an SSE stream's `data:` lines, as bytes (json.loads takes them).

    Lines are split here rather than with the SDK's iter_lines, which decodes
    and re-splits every chunk through three more async generators: per token.
    Blank separators, comments, `event:` and `id:` lines are skipped.
    """
    pending = b""
    async for chunk in chunks:
        if b"\r" in chunk:  # CRLF or CR line ends; a CR split across chunks only adds a blank
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()
    if pending.startswith(b"data:"):
        yield pending[5:].strip()


async def generate_image(prompt: str, *, size: str, quality: str = "", style: str = "") -> Picture:
    """Ask the image API for one picture and return its bytes."""
    kwargs: dict[str, Any] = {"model": settings.IMAGE_MODEL, "prompt": prompt, "n": 1}
    for name, value in (("size", size), ("quality", quality), ("style", style)):
        if value:
            kwargs[name] = value
    response_format = settings.IMAGE_RESPONSE_FORMAT
    if response_format == "auto":
        # gpt-image models always answer b64_json and reject the parameter.
        response_format = "none" if settings.IMAGE_MODEL.startswith("gpt-image") else "b64_json"
    if response_format != "none":
        kwargs["response_format"] = response_format
    try:
        response = await client(images=True).images.generate(**kwargs)
    except openai.BadRequestError as exc:
        if exc.code in {"moderation_blocked", "content_policy_violation"}:
            raise ImageAPIError(
                "image_refused", "The image service refused this prompt (content policy)."
            ) from exc
        raise ImageAPIError(
            "image_rejected", f"The image service rejected it: {exc.message}"
        ) from exc
    except openai.APITimeoutError as exc:
        raise ImageAPIError("image_timeout", "The image service took too long.") from exc
    except openai.OpenAIError as exc:
        raise ImageAPIError("image_unavailable", "The image service failed; try again.") from exc
    if not response.data:
        raise ImageAPIError("image_empty", "The image service returned no image.")
    item = response.data[0]
    if item.b64_json:
        try:
            data = base64.b64decode(item.b64_json, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageAPIError("image_corrupt", "The image service sent unreadable data.") from exc
    elif item.url:
        data = await _download(item.url)
    else:
        raise ImageAPIError("image_empty", "The image service returned no image.")
    if len(data) > settings.IMAGE_MAX_BYTES:
        raise ImageAPIError("image_too_large", "The generated image is too large.")
    return Picture(data, item.revised_prompt or "", settings.IMAGE_MODEL)


async def _download(url: str) -> bytes:
    """Fetch a provider's image URL: public addresses only, a size cap, one deadline."""
    from conversations import fetching  # the SSRF-guarded fetcher (docs/security.md)

    try:
        return await fetching.fetch(
            url,
            max_bytes=settings.IMAGE_MAX_BYTES,
            deadline=settings.IMAGE_FETCH_TIMEOUT_SECONDS,
            allowed=settings.IMAGE_FETCH_ALLOWED_NETWORKS,
        )
    except fetching.FetchError as exc:
        if exc.code == "refused":
            raise ImageAPIError(
                "image_url_refused",
                "The image service gave an address the server does not fetch from.",
            ) from exc
        if exc.code == "too_large":
            raise ImageAPIError("image_too_large", "The generated image is too large.") from exc
        if exc.code == "timeout":
            raise ImageAPIError("image_timeout", "Downloading the image took too long.") from exc
        raise ImageAPIError("image_unavailable", "The image could not be downloaded.") from exc


TITLE_PROMPT = (
    "Write a title of at most six words for a chat that begins as below. "
    "Reply with the title only: no quotes, no final full stop."
)


async def suggest_title(question: str, answer: str) -> str | None:
    """A short title from the first exchange, or None (the caller keeps its own)."""
    try:
        response = await client().chat.completions.create(
            model=settings.CHAT_MODEL,
            messages=[
                {"role": "system", "content": TITLE_PROMPT},
                {
                    "role": "user",
                    "content": f"User: {question[:1000]}\n\nAssistant: {answer[:1000]}",
                },
            ],
        )
    except openai.OpenAIError:
        return None
    content = response.choices[0].message.content if response.choices else None
    title = " ".join((content or "").split()).strip("\"'“”").rstrip(".")
    return title[:80] or None
