"""Everything that talks to the model provider, and the only importer of `openai`.

Works with any OpenAI-compatible server: it never relies on a usage chunk, on
revised_prompt, or on b64_json being present (a provider `url` is fetched with a
size limit instead). Without an API key it starts the built-in offline model
in this process and talks to it over loopback HTTP with the same client.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
import re
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import httpx2
import openai
import pybase64
from django.conf import settings

from conversations.models import Message, ToolInvocation
from conversations.protocol import ChatimgError

if TYPE_CHECKING:
    from offline_model import OfflineModelServer

log = logging.getLogger(__name__)


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


class LLMError(ChatimgError):
    """A provider failure, typed for the protocol's assistant.failed frame."""


class ImageAPIError(ChatimgError):
    """The image could not be generated; `message` is fit to show the user."""


@dataclass(frozen=True)
class Picture:
    data: bytes
    revised_prompt: str
    model: str


# --- the messages the model is sent -------------------------------------------------

CONTINUE_PROMPT = (
    "Your last answer was cut off by its length limit. Continue it exactly where it "
    "stopped, without repeating anything and without any preamble."
)


def model_messages(history: list[Message]) -> list[dict[str, Any]]:
    """The context sent to the model, rebuilt from the stored history.

    Image tool results appear only as their small JSON summary
    ({image_id, prompt, revised_prompt, status}): never bytes, never a URL.
    Only the fields the chat-completions spec requires, in shapes every
    server accepts (see tool_call_message).
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": settings.SYSTEM_PROMPT}]
    for message in history:
        if message.role == Message.Role.USER:
            messages.append({"role": "user", "content": user_content(message)})
            continue
        pending_calls: list[ToolInvocation] = []
        text_before_calls = ""
        for text, invocation in message.segments():
            if pending_calls and text:
                _append_tool_round(messages, text_before_calls, pending_calls)
                pending_calls, text_before_calls = [], ""
            if invocation is None:
                if text:
                    messages.append({"role": "assistant", "content": text})
                continue
            if not pending_calls:
                text_before_calls = text
            pending_calls.append(invocation)
        if pending_calls:
            _append_tool_round(messages, text_before_calls, pending_calls)
    return messages


def user_content(message: Message) -> str | list[dict[str, Any]]:
    """A question as the model reads it, with the images the user attached.

    Each upload is named by its id ("[image attachment <id>]") so that the
    model can pass it to an edit. With CHATIMG_VISION the pictures go along
    as image parts whose data URLs are built for this request only (read
    from storage now, never stored). Generated images never go back.
    """
    from conversations import attachments

    uploads = list(message.attachments.all())  # prefetched by Conversation.history
    if not uploads:
        return message.text
    names = " ".join(attachments.placeholder(upload) for upload in uploads)
    text = f"{message.text}\n\n{names}"
    if not settings.VISION:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for upload in uploads:
        parts.append({"type": "image_url", "image_url": {"url": attachments.data_url(upload)}})
    return parts


def _append_tool_round(
    messages: list[dict[str, Any]], text: str, calls: list[ToolInvocation]
) -> None:
    messages.append(
        tool_call_message(
            text, [(call.call_id, call.name, json.dumps(call.arguments)) for call in calls]
        )
    )
    for call in calls:
        messages.append(tool_result_message(call.call_id, call.model_result()))


def tool_call_message(text: str, calls: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The assistant's tool-call turn from (id, name, JSON arguments) triples.

    `content` is a string, never null: llama.cpp's server refuses null with
    HTTP 500, and since the history is rebuilt the same way every time, so
    would every later turn of the conversation.
    """
    return {
        "role": "assistant",
        "content": text,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            for call_id, name, args in calls
        ],
    }


def tool_result_message(call_id: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)}


# --- the offline model ------------------------------------------------------------

_offline_lock = threading.Lock()
_offline_server: OfflineModelServer | None = None


def offline_base_url() -> str:
    """Start the built-in model once per process and return its /v1 URL."""
    global _offline_server
    with _offline_lock:
        if _offline_server is None:
            from offline_model import OfflineModelServer

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
_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[object, ...], openai.AsyncOpenAI]
]
_clients = weakref.WeakKeyDictionary()


def client(*, images: bool = False) -> openai.AsyncOpenAI:
    api_key, base_url = _endpoint(images)
    timeout = settings.IMAGE_TIMEOUT_SECONDS if images else settings.LLM_TIMEOUT_SECONDS
    key = (api_key, base_url, timeout, settings.LLM_MAX_RETRIES, settings.AZURE_OPENAI_API_VERSION)
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    if key not in per_loop:
        options: dict[str, Any] = {
            "api_key": api_key,
            "timeout": httpx2.Timeout(timeout, connect=10.0),
            # The client retries connection errors, 408/409/429 and 5xx before a
            # stream starts, honouring Retry-After; never once it has started.
            "max_retries": settings.LLM_MAX_RETRIES,
            # The SDK's aiohttp transport parses HTTP in C and reads without
            # anyio's per-read cancel scope and socket pause/resume, a cost per
            # token per stream: the largest gain in docs/benchmarks.md.
            "http_client": openai.DefaultAioHttpClient(),
        }
        if settings.AZURE_OPENAI_API_VERSION and not settings.OFFLINE_MODEL:
            # Azure's dated endpoints route by deployment (the model name) and
            # take the key in an api-key header; its v1 endpoint is plain OpenAI.
            per_loop[key] = openai.AsyncAzureOpenAI(
                azure_endpoint=base_url or "",
                api_version=settings.AZURE_OPENAI_API_VERSION,
                **options,
            )
        else:
            per_loop[key] = openai.AsyncOpenAI(base_url=base_url, **options)
    return per_loop[key]


async def close_clients() -> None:
    """Close this event loop's clients and their HTTP sessions (at shutdown, after tests)."""
    for opened in _clients.pop(asyncio.get_running_loop(), {}).values():
        await opened.close()


EMPTY_ANSWER = "The model sent an empty answer; try again, or start a new chat if it repeats."


def _unreachable(exc: BaseException) -> bool:
    """Whether a failed request never reached the server (refused, no route, no name).

    The SDK's aiohttp transport reports a refused connection as a connect
    *timeout*; the OSError underneath says what really happened.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and not isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _llm_error(exc: Exception) -> LLMError:
    """A provider failure as a user would name it; the provider's own words go to the log."""
    if isinstance(exc, openai.APIStatusError):
        log.warning("the model provider answered %s: %.500s", exc.status_code, exc.message)
    if isinstance(exc, openai.APIConnectionError) and _unreachable(exc):
        return LLMError("upstream_unreachable", "The model server could not be reached.")
    if isinstance(exc, openai.APITimeoutError):
        return LLMError("upstream_timeout", "The model took too long to answer.")
    if isinstance(exc, openai.APIConnectionError):
        return LLMError("upstream_unreachable", "The model server could not be reached.")
    if isinstance(exc, openai.RateLimitError):
        return LLMError("upstream_rate_limited", "The model provider is busy.")
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return LLMError("upstream_auth", "The model provider refused our key.")
    if isinstance(exc, openai.NotFoundError):
        return LLMError(
            "upstream_model_not_found",
            f"The model provider has no model named {settings.CHAT_MODEL!r}.",
        )
    if isinstance(exc, openai.BadRequestError) and (
        exc.code == "context_length_exceeded" or "context" in str(exc.message).lower()
    ):
        return LLMError(
            "context_too_long",
            "This chat is too long for the model; start a new chat.",
        )
    if isinstance(exc, openai.APIStatusError) and exc.status_code < 500:
        return LLMError(
            "upstream_rejected", f"The model provider refused the request ({exc.status_code})."
        )
    if isinstance(exc, openai.APIStatusError):
        return LLMError("upstream_error", f"The model provider failed ({exc.status_code}).")
    return LLMError("upstream_error", "The model's answer could not be read.")


class TokenLimit(TypedDict, total=False):
    max_tokens: int
    max_completion_tokens: int


def _token_limit(limit: int) -> TokenLimit:
    """`max_tokens`, or `max_completion_tokens` for the models that refuse the former."""
    name = settings.MAX_TOKENS_PARAM
    if name == "auto":
        reasoning = settings.CHAT_MODEL.startswith(("o1", "o3", "o4", "gpt-5"))
        name = "max_completion_tokens" if reasoning else "max_tokens"
    if name == "max_completion_tokens":
        return {"max_completion_tokens": limit}
    return {"max_tokens": limit}


def chat_request(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """The body of a streamed chat completion request."""
    kwargs: dict[str, Any] = {
        "model": settings.CHAT_MODEL,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if settings.MAX_OUTPUT_TOKENS:
        kwargs.update(_token_limit(settings.MAX_OUTPUT_TOKENS))
    if tools:
        kwargs["tools"] = tools
        # OpenAI's default, said out loud: llama-cpp-python ignores the tools
        # without it (it answers in text, never calling one).
        kwargs["tool_choice"] = "auto"
    return kwargs


async def stream_chat(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> AsyncIterator[StreamEvent]:
    """Stream one completion as TextDelta / ToolCallRequest / StreamEnd events.

    The request, its retries and its errors are the SDK's; the body is read
    by `read_stream` (bytes split here, decoded with json.loads, not a typed
    model per chunk: the SDK's was its largest cost per token in bench/).
    Closing the generator closes the HTTP stream: cancel relies on it.

    Sent with the client's `post` (the SDK's way to a raw response) rather
    than `chat.completions.create`: create first walks the whole body against
    its TypedDicts, which changes nothing in the spec-shaped dicts built here
    (tests/test_model_messages.py checks that) and was half of the request's
    CPU (1.1 of 2.2 ms in bench/), paid by every turn start.
    """
    kwargs = chat_request(messages, tools)
    try:
        response = await client().post(
            "/chat/completions", cast_to=httpx2.Response, body=kwargs, stream=True
        )
    except openai.OpenAIError as exc:
        raise _llm_error(exc) from exc
    try:
        async with contextlib.aclosing(read_stream(response.aiter_bytes())) as events:
            async for event in events:
                yield event
    except LLMError as exc:
        if exc.code != "upstream_empty" or not tools:
            raise
        # llama-cpp-python cannot stream a tool call the model chose itself: it
        # answers 200 with an empty body. Asked again without streaming, it can.
        log.info("an empty stream to a request with tools; asking again without streaming")
        for event in await _complete(kwargs):
            yield event
    except httpx2.TimeoutException as exc:
        raise LLMError("upstream_stalled", "The model stopped sending mid-answer.") from exc
    except (openai.OpenAIError, httpx2.HTTPError) as exc:
        raise LLMError("upstream_stream_cut", "The model's answer was cut off.") from exc
    finally:
        await response.aclose()


@dataclass
class _PartialCall:
    """A tool call being assembled from its streamed fragments."""

    id: str = ""
    name: str = ""
    arguments: str = ""

    def add(self, part: dict[str, Any]) -> None:
        # OpenAI sends the id and the name once, then argument fragments;
        # llama.cpp's server and some gateways repeat the id and the whole name
        # in every fragment. A repeated name is the same name, not more of it.
        self.id = self.id or str(part.get("id") or "")
        function = part.get("function") or {}
        name = str(function.get("name") or "")
        if name and name != self.name:
            self.name += name
        self.arguments += str(function.get("arguments") or "")


async def read_stream(chunks: AsyncIterator[bytes]) -> AsyncGenerator[StreamEvent, None]:
    """A chat-completions SSE body, as TextDelta / ToolCallRequest / StreamEnd events.

    Takes what real servers send, not only what OpenAI sends: ids and names
    repeated in every tool-call fragment or arriving late, several tool calls,
    `finish_reason` on any chunk (or only a `[DONE]`), usage on any chunk or
    none, an `error` object mid-stream, an empty 200 body. Tool calls are
    assembled and yielded whole after the text. Raises LLMError for an
    ending that is not an answer: `upstream_empty` (no text and no tool call,
    as llama.cpp's server answers a context overflow), `upstream_stream_cut`
    (no `[DONE]` and no finish reason), `upstream_error` (an error object).
    """
    calls: dict[int, _PartialCall] = {}
    ids: dict[str, int] = {}  # for servers that send an id but no index
    finish_reason: str | None = None
    usage: dict[str, int] = {}
    done = produced = False
    async with contextlib.aclosing(_sse_data(chunks)) as payloads:
        async for data in payloads:
            if data == b"[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
            except ValueError as exc:  # also RecursionError's cousins: hostile bytes
                raise LLMError("upstream_error", "The model's answer could not be read.") from exc
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                log.warning("the model reported an error mid-stream: %.500s", chunk["error"])
                raise LLMError("upstream_error", "The model reported an error mid-answer.")
            if isinstance(chunk.get("usage"), dict):
                usage = {
                    "prompt_tokens": int(chunk["usage"].get("prompt_tokens") or 0),
                    "completion_tokens": int(chunk["usage"].get("completion_tokens") or 0),
                }
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue  # one answer was asked for (n=1)
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content and isinstance(content, str):
                    produced = True
                    yield TextDelta(content)
                for part in delta.get("tool_calls") or ():
                    if isinstance(part, dict):
                        _partial_call(calls, ids, part).add(part)
                finish_reason = choice.get("finish_reason") or finish_reason
    if not done and finish_reason is None:
        if produced or calls:
            raise LLMError("upstream_stream_cut", "The model's answer was cut off.")
        raise LLMError("upstream_empty", EMPTY_ANSWER)
    complete = [call for call in calls.values() if call.name]
    if not produced and not complete and finish_reason != "content_filter":
        raise LLMError("upstream_empty", EMPTY_ANSWER)
    for index, call in sorted(calls.items()):
        if call.name:
            yield ToolCallRequest(call.id or f"call_{index}", call.name, call.arguments)
    yield StreamEnd(finish_reason or "stop", usage)


async def _complete(kwargs: dict[str, Any]) -> list[StreamEvent]:
    """The same request without streaming, as the events a stream would have given."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("stream", "stream_options")}
    try:
        completion = await client().chat.completions.create(**kwargs)
    except openai.OpenAIError as exc:
        raise _llm_error(exc) from exc
    except ValueError as exc:  # a 200 whose body is not a completion
        raise LLMError("upstream_error", "The model's answer could not be read.") from exc
    events: list[StreamEvent] = []
    choice = completion.choices[0] if completion.choices else None
    message = choice.message if choice else None
    if message and message.content:
        events.append(TextDelta(message.content))
    for index, call in enumerate((message.tool_calls if message else None) or ()):
        function = getattr(call, "function", None)
        if function is not None and function.name:
            events.append(
                ToolCallRequest(call.id or f"call_{index}", function.name, function.arguments)
            )
    if not events and (choice is None or choice.finish_reason != "content_filter"):
        raise LLMError("upstream_empty", EMPTY_ANSWER)
    usage = completion.usage
    tokens = (
        {
            "prompt_tokens": usage.prompt_tokens or 0,
            "completion_tokens": usage.completion_tokens or 0,
        }
        if usage
        else {}
    )
    events.append(StreamEnd((choice.finish_reason if choice else None) or "stop", tokens))
    return events


def _partial_call(
    calls: dict[int, _PartialCall], ids: dict[str, int], part: dict[str, Any]
) -> _PartialCall:
    index = part.get("index")
    if not isinstance(index, int):
        call_id = str(part.get("id") or "")
        if call_id and call_id not in ids:
            index = len(calls)
        else:
            index = ids.get(call_id, max(calls, default=0))
    call = calls.setdefault(index, _PartialCall())
    if part.get("id"):
        ids.setdefault(str(part["id"]), index)
    return call


async def _sse_data(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
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


# Options that a provider may refuse by name; a retry without them is worth a try.
_DROPPABLE = ("response_format", "quality", "style", "size", "n")
# Asked together, dropped together: a server that cannot stream images gets
# one plain request (the previews are a nicety, the image is the point).
_STREAMING = ("stream", "partial_images")

#: (name, bytes, content type): one file of a multipart edit request.
ImageFile = tuple[str, bytes, str]
#: Called with (image index in the call, partial index, preview bytes).
PreviewSink = Callable[[int, int, bytes], Awaitable[None]]


async def generate_image(prompt: str, *, size: str, quality: str = "", style: str = "") -> Picture:
    """One picture for a prompt (the common case of generate_images)."""
    return (await generate_images(prompt, size=size, quality=quality, style=style))[0]


async def generate_images(
    prompt: str,
    *,
    size: str,
    quality: str = "",
    style: str = "",
    n: int = 1,
    partial_images: int = 0,
    on_preview: PreviewSink | None = None,
) -> list[Picture]:
    """Ask the image API for `n` pictures of a prompt and return their bytes, in order.

    `response_format` is sent only where it is needed (dall-e models answer
    with a URL unless asked); gateways such as LiteLLM refuse it for other
    models. A 400 that names one of the optional parameters is retried once
    without it. With `partial_images` the request streams and each partial
    image goes to `on_preview` as it arrives. The provider's own error text
    goes to the log, never to the user or the model.
    """
    kwargs: dict[str, Any] = {"model": settings.IMAGE_MODEL, "prompt": prompt, "n": n}
    for name, value in (("size", size), ("quality", quality), ("style", style)):
        if value:
            kwargs[name] = value
    return await _images_call("generate", kwargs, n, partial_images, on_preview)


async def edit_images(
    prompt: str,
    sources: list[ImageFile],
    *,
    mask: ImageFile | None = None,
    size: str = "",
    quality: str = "",
    n: int = 1,
    partial_images: int = 0,
    on_preview: PreviewSink | None = None,
) -> list[Picture]:
    """Edit stored images with the image API's edit endpoint (multipart) and return the results.

    One source goes as `image`, several as `image[]` (the SDK's encoding of a
    list), the mask as `mask`. A provider without the endpoint (404, 405,
    501) is `images_edit_not_supported`, told apart from a missing model.
    """
    kwargs: dict[str, Any] = {
        "model": settings.IMAGE_MODEL,
        "prompt": prompt,
        "image": sources[0] if len(sources) == 1 else list(sources),
        "n": n,
    }
    if mask is not None:
        kwargs["mask"] = mask
    for name, value in (("size", size), ("quality", quality)):
        if value:
            kwargs[name] = value
    return await _images_call("edit", kwargs, n, partial_images, on_preview)


async def _images_call(
    kind: str,
    kwargs: dict[str, Any],
    n: int,
    partial_images: int,
    on_preview: PreviewSink | None,
) -> list[Picture]:
    response_format = settings.IMAGE_RESPONSE_FORMAT
    if response_format == "auto":
        response_format = "b64_json" if settings.IMAGE_MODEL.startswith("dall-e") else "none"
    if response_format != "none":
        kwargs["response_format"] = response_format
    # Partial images stream as base64 only: a provider set up to answer with
    # URLs (CHATIMG_IMAGE_RESPONSE_FORMAT=url) is asked plainly.
    if partial_images and on_preview is not None and response_format != "url":
        kwargs["stream"] = True
        kwargs["partial_images"] = partial_images
    images = client(images=True).images
    call = images.generate if kind == "generate" else images.edit
    dropped: list[str] = []
    while True:
        try:
            response = await call(**kwargs)
            if kwargs.get("stream"):
                assert on_preview is not None
                items = await _read_image_stream(response, on_preview)
            else:
                items = [
                    (item.b64_json, item.url, item.revised_prompt) for item in response.data or []
                ]
        except openai.BadRequestError as exc:
            log.warning("the image API refused a request (%s): %.500s", exc.code, exc.message)
            if exc.code in {"moderation_blocked", "content_policy_violation"}:
                raise ImageAPIError(
                    "image_refused", "The image service refused this prompt (content policy)."
                ) from exc
            refused = [name for name in _DROPPABLE if name in kwargs and _names(exc, name)]
            if any(name in kwargs and _names(exc, name) for name in _STREAMING):
                refused += [name for name in _STREAMING if name in kwargs]
            if dropped or not refused:
                raise ImageAPIError(
                    "image_rejected", "The image service could not draw this request."
                ) from exc
            for name in refused:
                del kwargs[name]
            dropped = refused
            continue
        except openai.OpenAIError as exc:
            raise _image_error(exc, edit=kind == "edit") from exc
        if not items and kwargs.get("stream") and not dropped:
            # A server that ignores `stream` answers JSON, which reads as an
            # empty event stream: ask once more, plainly.
            log.info("the image API sent no events to a streamed request; asking without")
            dropped = [name for name in _STREAMING if kwargs.pop(name, None) is not None]
            continue
        break
    if dropped:
        log.info("the image API took the request without %s", ", ".join(dropped))
    if not items:
        raise ImageAPIError("image_empty", "The image service returned no image.")
    # A provider may send more than asked: the quota reserved `n`.
    return [await _picture(*item) for item in items[:n]]


async def _read_image_stream(
    stream: Any, on_preview: PreviewSink
) -> list[tuple[str | None, str | None, str | None]]:
    """Read a streamed image response: partials to `on_preview`, the finished images returned.

    Each `….completed` event closes one image; the partials before it belong
    to it (OpenAI streams the images of a call one after another).
    """
    finished: list[tuple[str | None, str | None, str | None]] = []
    try:
        async for event in stream:
            kind = str(getattr(event, "type", ""))
            if kind.endswith(".partial_image"):
                try:
                    data = pybase64.b64decode(event.b64_json, validate=True)  # see _picture
                except (binascii.Error, ValueError, TypeError):
                    continue  # a broken preview is skipped: the final image is what counts
                await on_preview(len(finished), int(event.partial_image_index or 0), data)
            elif kind.endswith(".completed"):
                # OpenAI's events have no revised_prompt; a gateway's may.
                revised = getattr(event, "revised_prompt", None)
                finished.append(
                    (event.b64_json, None, revised if isinstance(revised, str) else None)
                )
    except httpx2.HTTPError as exc:
        raise ImageAPIError("image_unavailable", "The image service broke off; try again.") from exc
    finally:
        await stream.close()
    return finished


async def _picture(b64_json: str | None, url: str | None, revised_prompt: str | None) -> Picture:
    if b64_json:
        try:
            # pybase64 (SIMD): the refusals of b64decode(validate=True), on the
            # event loop in 0.15 ms for a 1024x1024 PNG's 2.8 MB of base64,
            # where binascii's strict mode took 6.6-8 ms (docs/benchmarks.md).
            data = pybase64.b64decode(b64_json, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageAPIError("image_corrupt", "The image service sent unreadable data.") from exc
    elif url:
        data = await _download(url)
    else:
        raise ImageAPIError("image_empty", "The image service returned no image.")
    if len(data) > settings.IMAGE_MAX_BYTES:
        raise ImageAPIError("image_too_large", "The generated image is too large.")
    return Picture(data, revised_prompt or "", settings.IMAGE_MODEL)


def _names(exc: openai.BadRequestError, parameter: str) -> bool:
    """Whether a 400 is about `parameter` (OpenAI's `param`, or a gateway's text)."""
    if exc.param == parameter:
        return True
    message = str(exc.message)
    if len(parameter) < 3:  # "n" is in every sentence: only a quoted name counts
        return any(f"{q}{parameter}{q}" in message for q in ("'", '"', "`"))
    return parameter in message


def _image_error(exc: openai.OpenAIError, *, edit: bool = False) -> ImageAPIError:
    if isinstance(exc, openai.APIStatusError):
        log.warning("the image API answered %s: %.500s", exc.status_code, exc.message)
    if edit and (
        isinstance(exc, openai.NotFoundError)
        or (isinstance(exc, openai.APIStatusError) and exc.status_code in (405, 501))
    ):
        return ImageAPIError(
            "images_edit_not_supported",
            "This image service cannot edit images; ask for a new picture instead.",
            retryable=False,
        )
    if isinstance(exc, openai.APIConnectionError) and _unreachable(exc):
        return ImageAPIError("image_unavailable", "The image service could not be reached.")
    if isinstance(exc, openai.APITimeoutError):
        return ImageAPIError("image_timeout", "The image service took too long.")
    if isinstance(exc, openai.NotFoundError) or (
        isinstance(exc, openai.APIStatusError) and exc.status_code in (405, 501)
    ):
        return ImageAPIError(
            "images_not_supported",
            "This model provider has no image service; images need one "
            "(see OPENAI_IMAGE_BASE_URL in the docs).",
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ImageAPIError("image_auth", "The image service refused our key.")
    return ImageAPIError("image_unavailable", "The image service failed; try again.")


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
TITLE_MAX_TOKENS = 24
# "Title: …", "**Chat title** - …": the label some models put before the title.
# Small models also echo the prompt's "User:" / "Assistant:" labels.
_TITLE_LABEL = re.compile(
    r"^\s*(?:(?:chat\s+)?title|user|assistant)\s*[:\-\u2013\u2014]\s*", re.IGNORECASE
)
TITLE_MAX_WORDS = 8
_MARKDOWN = re.compile(r"[*`#>~]+|(?<!\w)_+|_+(?!\w)|^\s*[-+]\s+|\[([^\]]*)\]\([^)]*\)")


def clean_title(raw: str) -> str:
    """A model's title without Markdown, a label, quotes or a final full stop."""
    lines = [line for line in raw.splitlines() if line.strip()]
    title = lines[0] if lines else ""
    title = _MARKDOWN.sub(lambda m: m.group(1) or "", title)
    quotes = "\"'\u201c\u201d\u2018\u2019 "
    title = _TITLE_LABEL.sub("", title.strip(quotes))
    title = " ".join(title.split()[:TITLE_MAX_WORDS]).strip(quotes).rstrip(".,;:").strip()
    return title[:80]


async def suggest_title(question: str, answer: str) -> str | None:
    """A short title from the first exchange, or None (the caller keeps its own).

    Bounded by TITLE_MAX_TOKENS: a small model once wrote 8,187 tokens of
    "title", holding a single-slot server while the user's next turn waited.
    """
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
            **_token_limit(TITLE_MAX_TOKENS),
        )
    except openai.OpenAIError as exc:
        log.info("no title from the model: %s", exc)
        return None
    content = response.choices[0].message.content if response.choices else None
    return clean_title(content or "") or None
