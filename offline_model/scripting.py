"""The scripting vocabulary: what tests and benchmarks queue for the offline model to answer.

Each item is consumed by one request (FIFO): ``Reply`` streams a scripted assistant turn,
``Fail`` answers with an OpenAI-style error, ``Hang`` accepts and says nothing,
``ImageReply`` shapes an image response; ``RecordedRequest`` is what the server saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    #: The files of a multipart request (images edit): (field, filename, content type, bytes).
    files: tuple[tuple[str, str, str, bytes], ...] = ()
