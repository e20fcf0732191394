"""The generate_image tool: its schema, and turning a call into a stored image.

Bytes go to object storage through Django's storage API, off the event loop and
off the single thread that serves the ORM; the database row is written only
once the object exists, and the object is removed again if the row cannot be
written, so there is never an object without a row or a row without an object.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image, UnidentifiedImageError

from conversations import llm
from conversations.models import GeneratedImage, ToolInvocation, image_key

log = logging.getLogger(__name__)

TOOL_NAME = "generate_image"
MAX_PROMPT_CHARS = 4000
ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}

GENERATE_IMAGE_TOOL = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Generate an image from a detailed text description and show it "
        "to the user in the chat.",
        "parameters": {
            "type": "object",
            "properties": {
                "prompt": {
                    "type": "string",
                    "description": "A detailed description of the image to generate.",
                }
            },
            "required": ["prompt"],
        },
    },
}


class ToolError(Exception):
    """A tool call that failed; the message is shown to the user and the model."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_arguments(raw: str) -> dict[str, str]:
    """Validate the model's JSON arguments; models do send garbage sometimes."""
    try:
        arguments = json.loads(raw or "{}")
    except json.JSONDecodeError:
        raise ToolError("bad_arguments", "The model sent unreadable tool arguments.") from None
    prompt = arguments.get("prompt") if isinstance(arguments, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise ToolError("bad_arguments", "The model did not say what to draw.")
    return {"prompt": prompt.strip()[:MAX_PROMPT_CHARS]}


@dataclass(frozen=True)
class DecodedImage:
    format: str
    width: int
    height: int
    sha256: str


def decode(data: bytes) -> DecodedImage:
    """Check that the bytes really are an image we serve, and measure them."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.verify()
            kind = picture.format or ""
            width, height = picture.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ToolError(
            "image_corrupt", "The image service sent data that is not an image."
        ) from exc
    if kind not in ALLOWED_FORMATS:
        raise ToolError("image_corrupt", f"The image service sent an unsupported format ({kind}).")
    return DecodedImage(ALLOWED_FORMATS[kind], width, height, hashlib.sha256(data).hexdigest())


def _store(image: GeneratedImage, data: bytes) -> str:
    """Decode and upload (runs in a worker thread; boto3 blocks)."""
    decoded = decode(data)
    image.format = decoded.format
    image.width, image.height, image.sha256 = decoded.width, decoded.height, decoded.sha256
    image.bytes = len(data)
    try:
        return default_storage.save(image_key(image, ""), ContentFile(data))
    except Exception as exc:
        log.warning("image upload failed: %s", exc)
        raise ToolError("storage_unavailable", "The image could not be saved; try again.") from exc


def _delete_object(name: str) -> None:
    try:
        default_storage.delete(name)
    except Exception:
        log.exception("could not remove object %s after a failed save", name)


async def generate(
    invocation: ToolInvocation, *, user_id: int, conversation_id: uuid.UUID
) -> GeneratedImage:
    """Run one generate_image call end to end and return the stored image."""
    prompt = invocation.prompt
    started = time.monotonic()
    try:
        picture = await llm.generate_image(prompt, size=settings.IMAGE_SIZE)
    except llm.ImageAPIError as exc:
        raise ToolError(exc.code, exc.message) from exc
    image = GeneratedImage(
        id=uuid.uuid4(),
        user_id=user_id,
        conversation_id=conversation_id,
        tool_invocation=invocation,
        model=picture.model,
        size=settings.IMAGE_SIZE,
        prompt=prompt,
        revised_prompt=picture.revised_prompt,
    )
    name = await sync_to_async(_store, thread_sensitive=False)(image, picture.data)
    image.file.name = name
    image.latency_ms = int((time.monotonic() - started) * 1000)
    try:
        await database_sync_to_async(image.save)(force_insert=True)
    except Exception as exc:
        await sync_to_async(_delete_object, thread_sensitive=False)(name)
        raise ToolError("storage_unavailable", "The image could not be recorded.") from exc
    return image
