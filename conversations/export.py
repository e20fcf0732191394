"""A conversation to take away: Markdown, or a zip of the Markdown and its images.

The zip is streamed: its Markdown first, then each image read from storage
in chunks and written straight into the response (zipfile writes to a
stream it cannot seek, with data descriptors), so an export of a hundred
images never holds more than a chunk or so in memory. Under ASGI the chunks
are produced off the event loop, one at a time (a plain iterator would make
Django read the whole body into memory first).
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Prefetch
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.http import require_GET

from conversations.auth import AuthenticatedHttpRequest
from conversations.models import Conversation, GeneratedImage, Message

CHUNK = 64 * 1024


def owned_messages(user: Any, conversation_id: uuid.UUID) -> tuple[Conversation, list[Message]]:
    """The owner's conversation and its active branch's finished messages, images prefetched."""
    conversation = get_object_or_404(Conversation, pk=conversation_id, user=user)
    messages = list(
        conversation.messages.filter(active=True)
        .exclude(status=Message.Status.STREAMING)
        .prefetch_related(
            Prefetch("tool_invocations__images", queryset=GeneratedImage.objects.all())
        )
    )
    return conversation, messages


def images_of(messages: list[Message]) -> list[GeneratedImage]:
    """The conversation's images that can be exported (hidden ones stay out)."""
    found = []
    for message in messages:
        for invocation in message.tool_invocations.all():
            found += [image for image in invocation.image_list if not image.is_hidden]
    return found


def image_name(image: GeneratedImage) -> str:
    return f"images/{image.pk}.{image.format or 'png'}"


def markdown_of(
    conversation: Conversation, messages: list[Message], link: Callable[[GeneratedImage], str]
) -> str:
    """The conversation as Markdown; `link` gives each image's link target."""
    lines = [f"# {conversation}", "", f"Exported from chatimg on {_now()}.", ""]
    for message in messages:
        who = "You" if message.role == Message.Role.USER else "Assistant"
        lines += ["---", "", f"**{who}** · {message.created_at:%Y-%m-%d %H:%M} UTC", ""]
        for text, invocation in message.segments():
            if text.strip():
                lines += [text.strip(), ""]
            for image in invocation.image_list if invocation is not None else []:
                if image.is_hidden:
                    continue
                alt = " ".join((image.revised_prompt or image.prompt).split()).replace("]", ")")
                lines += [f"![{alt}]({link(image)})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _now() -> str:
    return f"{timezone.now():%Y-%m-%d %H:%M} UTC"


def filename(conversation: Conversation, extension: str) -> str:
    return f"chatimg-{slugify(str(conversation))[:60] or 'conversation'}.{extension}"


@login_required
@require_GET
def export_markdown(request: AuthenticatedHttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """The conversation as a .md file; images link to their app URL (a login opens them)."""
    conversation, messages = owned_messages(request.user, conversation_id)
    text = markdown_of(
        conversation, messages, lambda image: request.build_absolute_uri(image.get_absolute_url())
    )
    response = HttpResponse(text, content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename(conversation, "md")}"'
    return response


class _Sink(io.RawIOBase):
    """What zipfile writes into; the generator hands on what gathered after each step.

    Not seekable (tell() raises), so zipfile streams with data descriptors.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def zip_chunks(markdown: str, images: list[GeneratedImage]) -> Iterator[bytes]:
    """The zip, chunk by chunk: conversation.md, then images/<id>.<format>."""
    sink = _Sink()
    # Pictures are compressed already: the fastest level is enough.
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("conversation.md", markdown)
        yield sink.take()
        for image in images:
            info = zipfile.ZipInfo(image_name(image), date_time=image.created_at.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            source = default_storage.open(str(image.file.name))
            with source, archive.open(info, "w") as out:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
                    if data := sink.take():
                        yield data
            yield sink.take()
    yield sink.take()


async def _off_the_loop(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    # Storage reads block: each chunk is made on a worker thread (not the
    # single thread the ORM uses), and the loop only forwards it.
    def step() -> bytes | None:
        return next(chunks, None)

    while (chunk := await sync_to_async(step, thread_sensitive=False)()) is not None:
        if chunk:
            yield chunk


@login_required
@require_GET
def export_zip(request: AuthenticatedHttpRequest, conversation_id: uuid.UUID) -> HttpResponseBase:
    """The conversation as a zip: conversation.md with relative links into images/."""
    conversation, messages = owned_messages(request.user, conversation_id)
    markdown = markdown_of(conversation, messages, image_name)
    chunks = zip_chunks(markdown, images_of(messages))
    response = StreamingHttpResponse(
        _off_the_loop(chunks) if isinstance(request, ASGIRequest) else chunks,
        content_type="application/zip",
    )
    response["Content-Disposition"] = f'attachment; filename="{filename(conversation, "zip")}"'
    return response
