"""Websocket protocol v1 on the wire: every server frame is built here, and every code.

docs/protocol.md is the reference. One builder per server frame, used by the
live events of a turn and by catch-up alike, so that a client sees the same
frame for the same state however it learns of it. One vocabulary of codes
(`CODES`): what each means to a person (the page shows the text) and whether
trying again can help; `ChatimgError` is the one exception that carries a code.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Code:
    text: str  # for a person: the page shows it, with the server's message as detail
    retryable: bool = True


CODES: dict[str, Code] = {
    # The model provider (assistant.failed).
    "upstream_unreachable": Code("The model's server could not be reached; it may be down."),
    "upstream_timeout": Code("The model took too long to answer."),
    "upstream_stalled": Code("The model stopped sending mid-answer; the text so far is kept."),
    "upstream_stream_cut": Code("The model's answer broke off; the text so far is kept."),
    "upstream_empty": Code("The model sent an empty answer."),
    "upstream_error": Code("The model answered with an error."),
    "upstream_rejected": Code("The model refused the request.", retryable=False),
    "upstream_rate_limited": Code("The model is getting too many requests right now."),
    "upstream_auth": Code(
        "The model refused the server's credentials; tell the site's operator.", retryable=False
    ),
    "upstream_model_not_found": Code(
        "The model this site is set up to use does not exist there; tell the site's operator.",
        retryable=False,
    ),
    "context_too_long": Code(
        "This chat is now too long for the model: start a new chat.", retryable=False
    ),
    "content_filtered": Code(
        "The model provider's content filter stopped this answer.", retryable=False
    ),
    "turn_timeout": Code("The answer took too long and was stopped."),
    "internal_error": Code("Something went wrong on our side."),
    "interrupted": Code("The server stopped while writing this answer; the text so far is kept."),
    # Refused frames (error).
    "unauthenticated": Code("You have been logged out.", retryable=False),
    "bad_json": Code("That message could not be read.", retryable=False),
    "bad_frame": Code("That message could not be read.", retryable=False),
    "unknown_type": Code("That request is not known to this server.", retryable=False),
    "frame_too_large": Code("That message is too large to send.", retryable=False),
    "too_deep": Code("That message could not be read.", retryable=False),
    "number_too_large": Code("That message could not be read.", retryable=False),
    "bad_text": Code("That message holds characters that cannot be stored.", retryable=False),
    "message_too_long": Code("That message is too long.", retryable=False),
    "rate_limited": Code("You are sending messages too quickly."),
    "turn_in_progress": Code("An answer is still being written: wait for it, or stop it."),
    "nothing_to_regenerate": Code("There is no answer to redo.", retryable=False),
    "nothing_to_continue": Code(
        "The last answer is complete; there is nothing to continue.", retryable=False
    ),
    "not_found": Code("This conversation no longer exists.", retryable=False),
    # Image tool calls (tool.failed; the model is told too).
    "image_not_found": Code("That image is not in this conversation.", retryable=False),
    "images_edit_not_supported": Code(
        "This site's image service cannot edit images; ask for a new picture.", retryable=False
    ),
    "too_many_sources": Code("Too many images to edit at once.", retryable=False),
    "server_draining": Code("The server is restarting; your message will be sent again."),
    # Attachments (message.send) and uploads (POST /attachments/, JSON errors).
    "attachment_not_found": Code(
        "An attached image is no longer available; attach it again.", retryable=False
    ),
    "too_many_attachments": Code("That message has too many images attached.", retryable=False),
    "upload_too_large": Code("That image file is too large.", retryable=False),
    "upload_too_many_pixels": Code("That image has too many pixels.", retryable=False),
    "upload_bomb": Code("That image declares far more pixels than it holds.", retryable=False),
    "upload_not_image": Code("That file is not a PNG, JPEG, WebP or GIF image.", retryable=False),
    "quota_exceeded": Code("You have used all your images for today.", retryable=False),
    "storage_unavailable": Code("The image could not be saved; try again."),
    "": Code("Something went wrong."),
}


def text_of(code: str) -> str:
    return (CODES.get(code) or CODES[""]).text


def page_texts() -> dict[str, str]:
    """The texts the page shows for each code (chat.js reads them from the page)."""
    return {code: entry.text for code, entry in CODES.items()}


class ChatimgError(Exception):
    """A failure with a protocol code; `message` is fit to show (never a provider's words)."""

    def __init__(self, code: str, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = (
            (CODES.get(code) or CODES[""]).retryable if retryable is None else retryable
        )


def group_name(conversation_id: uuid.UUID) -> str:
    """The channel-layer group of everyone following a conversation."""
    return f"conv.{conversation_id.hex}"


def encode(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def _ids(conversation_id: uuid.UUID | str, message_id: int) -> dict[str, Any]:
    return {"conversation_id": str(conversation_id), "message_id": message_id}


# --- frames of a turn ----------------------------------------------------------------


def assistant_started(conversation_id: uuid.UUID, message_id: int) -> str:
    return encode("assistant.started", **_ids(conversation_id, message_id))


def assistant_delta(
    conversation_id: uuid.UUID | str, message_id: int, offset: int, text: str
) -> str:
    return encode("assistant.delta", **_ids(conversation_id, message_id), offset=offset, text=text)


def tool_started(
    conversation_id: uuid.UUID,
    message_id: int,
    *,
    tool_call_id: int,
    name: str,
    offset: int,
    prompt: str,
    started_at: str,
) -> str:
    return encode(
        "tool.started",
        **_ids(conversation_id, message_id),
        tool_call_id=tool_call_id,
        name=name,
        offset=offset,
        prompt=prompt,
        started_at=started_at,
    )


def tool_completed(
    conversation_id: uuid.UUID,
    message_id: int,
    *,
    tool_call_id: int,
    name: str,
    images: list[dict[str, Any]],
    notes: list[str],
    images_left_today: int | None,
) -> str:
    """A finished call: `images` in order; `image` is the first (clients of one image)."""
    return encode(
        "tool.completed",
        **_ids(conversation_id, message_id),
        tool_call_id=tool_call_id,
        name=name,
        image=images[0],
        images=images,
        notes=notes,
        images_left_today=images_left_today,
    )


def tool_preview(
    conversation_id: uuid.UUID,
    message_id: int,
    *,
    tool_call_id: int,
    index: int,
    partial: int,
    data_url: str,
    width: int,
    height: int,
) -> str:
    """A partial image while image `index` of a call is drawn: a small JPEG data URL.

    Live only (never stored, never replayed at catch-up): the one frame that
    carries image data, kept small (CHATIMG_IMAGE_PREVIEW_PX on its longest side).
    """
    return encode(
        "tool.preview",
        **_ids(conversation_id, message_id),
        tool_call_id=tool_call_id,
        index=index,
        partial=partial,
        data_url=data_url,
        width=width,
        height=height,
    )


def tool_failed(
    conversation_id: uuid.UUID,
    message_id: int,
    *,
    tool_call_id: int,
    name: str,
    code: str,
    message: str,
) -> str:
    return encode(
        "tool.failed",
        **_ids(conversation_id, message_id),
        tool_call_id=tool_call_id,
        name=name,
        error={"code": code, "message": message},
    )


FINAL_OK = ("complete", "cancelled")


def answer_ended(
    conversation_id: uuid.UUID | str,
    message_id: int,
    *,
    status: str,
    text_length: int,
    html: str,
    usage: dict[str, int] | None = None,
    truncated: bool = False,
    error_code: str = "",
    error_message: str = "",
) -> str:
    """The final frame of an answer, from its stored state: live and catch-up alike.

    `complete` and `cancelled` end with assistant.completed; `failed` and
    `interrupted` with assistant.failed, whose `retryable` follows the code.
    """
    ids = _ids(conversation_id, message_id)
    if status in FINAL_OK:
        return encode(
            "assistant.completed",
            **ids,
            status=status,
            text_length=text_length,
            html=html,
            usage=usage or {},
            truncated=truncated,
        )
    code = error_code or ("interrupted" if status == "interrupted" else "internal_error")
    return encode(
        "assistant.failed",
        **ids,
        status=status,
        code=code,
        message=error_message or text_of(code),
        retryable=(CODES.get(code) or CODES[""]).retryable,
        text_length=text_length,
        html=html,
    )


def final_frame(message: Any, html: str) -> str:
    """answer_ended for a stored answer (a Message): what catch-up and the sweep send."""
    return answer_ended(
        message.conversation_id,
        message.pk,
        status=message.status,
        text_length=len(message.text),
        html=html,
        usage=message.usage,
        truncated=message.truncated,
        error_code=message.error_code,
        error_message=message.error_message,
    )


# --- frames about a conversation and a socket ------------------------------------------


def session_ready(user: str, limits: dict[str, int]) -> str:
    return encode("session.ready", protocol=PROTOCOL_VERSION, user=user, limits=limits)


def message_created(
    conversation_id: uuid.UUID,
    message_id: int,
    client_message_id: str,
    text: str,
    attachments: list[dict[str, Any]] | None = None,
    branch: dict[str, Any] | None = None,
) -> str:
    """A user message was stored; `branch` (an edit's) is {replaces_message_id, versions}."""
    return encode(
        "message.created",
        conversation_id=str(conversation_id),
        message_id=message_id,
        client_message_id=client_message_id,
        text=text,
        attachments=attachments or [],
        **(branch or {}),
    )


def edit_branch(replaces: int, versions: list[int]) -> dict[str, Any]:
    """The fields an edit adds to message.created and message.accepted."""
    return {"replaces_message_id": replaces, "versions": versions}


def branch_switched(
    conversation_id: uuid.UUID,
    message_id: int,
    replaces: int | None,
    messages: list[dict[str, Any]],
    html: str,
) -> str:
    """The active branch changed at `replaces`: from there to its end, as data and HTML."""
    return encode(
        "branch.switched",
        conversation_id=str(conversation_id),
        message_id=message_id,
        replaces_message_id=replaces,
        messages=messages,
        html=html,
    )


def message_accepted(
    conversation_id: uuid.UUID,
    *,
    client_message_id: str,
    message_id: int,
    assistant_message_id: int,
    duplicate: bool,
    title: str,
    url: str,
    attachments: list[dict[str, Any]] | None = None,
    branch: dict[str, Any] | None = None,
) -> str:
    return encode(
        "message.accepted",
        conversation_id=str(conversation_id),
        client_message_id=client_message_id,
        message_id=message_id,
        assistant_message_id=assistant_message_id,
        duplicate=duplicate,
        conversation={"id": str(conversation_id), "title": title, "url": url},
        attachments=attachments or [],
        **(branch or {}),
    )


def conversation_state(
    conversation_id: uuid.UUID, message_id: int | None, status: str | None, text_length: int = 0
) -> str:
    return encode(
        "conversation.state",
        conversation_id=str(conversation_id),
        message_id=message_id,
        status=status,
        text_length=text_length,
    )


def conversation_updated(conversation_id: uuid.UUID, title: str) -> str:
    return encode("conversation.updated", conversation_id=str(conversation_id), title=title)


def turn_regenerating(
    conversation_id: uuid.UUID, replaces: int, answer: int, versions: list[int]
) -> str:
    return encode(
        "turn.regenerating",
        conversation_id=str(conversation_id),
        replaces_message_id=replaces,
        assistant_message_id=answer,
        versions=versions,
    )


def branch_listed(conversation_id: uuid.UUID, messages: list[dict[str, Any]]) -> str:
    return encode("branch.listed", conversation_id=str(conversation_id), messages=messages)


def branch_message(message: Any) -> dict[str, Any]:
    """A message of a switched-to branch (a Message with `versions`), for programs."""
    return {
        "id": message.pk,
        "role": message.role,
        "status": message.status,
        "text": message.text,
        "versions": message.versions,
    }


def error(code: str, message: str, ref: str | None = None) -> str:
    return encode("error", code=code, message=message, ref=ref)


def pong(ping_id: Any) -> str:
    return encode("pong", id=ping_id)
