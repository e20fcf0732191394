"""The generate_image tool: its schema and options, and turning a call into a stored image.

Bytes go to object storage through Django's storage API, off the event loop and
off the single thread that serves the ORM; the database row is written only
once the object exists, and the object is removed again if the row cannot be
written, so there is never an object without a row or a row without an object.
Identical bytes are stored once per user: a repeat points at the same object.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image, UnidentifiedImageError

from conversations import llm
from conversations.models import (
    GeneratedImage,
    ImageQuota,
    QuotaExceeded,
    ToolInvocation,
    image_key,
)
from conversations.protocol import ChatimgError

log = logging.getLogger(__name__)

TOOL_NAME = "generate_image"
MAX_PROMPT_CHARS = 4000
ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


@dataclass(frozen=True)
class ModelOptions:
    sizes: tuple[str, ...]
    qualities: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()


# What each image model accepts, by name prefix (longest match wins). Values
# outside these are dropped with a note instead of failing upstream.
KNOWN_MODELS = {
    "gpt-image": ModelOptions(
        ("1024x1024", "1024x1536", "1536x1024", "auto"), ("low", "medium", "high", "auto")
    ),
    "dall-e-3": ModelOptions(
        ("1024x1024", "1792x1024", "1024x1792"), ("standard", "hd"), ("vivid", "natural")
    ),
    "dall-e-2": ModelOptions(("256x256", "512x512", "1024x1024")),
    "offline-image": ModelOptions(
        ("256x256", "512x512", "1024x1024", "1024x1536", "1536x1024"),
        ("low", "medium", "high"),
        ("vivid", "natural"),
    ),
}


def model_options() -> ModelOptions:
    """The allow-lists for the configured image model; env settings override the table."""
    model = settings.IMAGE_MODEL
    known = next(
        (
            KNOWN_MODELS[p]
            for p in sorted(KNOWN_MODELS, key=len, reverse=True)
            if model.startswith(p)
        ),
        ModelOptions(()),
    )
    sizes = tuple(settings.IMAGE_SIZES) or known.sizes
    if settings.IMAGE_SIZE not in sizes:  # the operator's default is always allowed
        sizes = (settings.IMAGE_SIZE, *sizes)
    return ModelOptions(
        sizes,
        tuple(settings.IMAGE_QUALITIES) or known.qualities,
        tuple(settings.IMAGE_STYLES) or known.styles,
    )


def tool_schema() -> dict[str, Any]:
    """The tool as the model sees it: only options the image model supports."""
    options = model_options()
    properties: dict[str, Any] = {
        "prompt": {"type": "string", "description": "A detailed description of the image."}
    }
    if len(options.sizes) > 1:
        properties["size"] = {
            "type": "string",
            "enum": list(options.sizes),
            "description": f"Image size; default {settings.IMAGE_SIZE}.",
        }
    if options.qualities:
        properties["quality"] = {"type": "string", "enum": list(options.qualities)}
    if options.styles:
        properties["style"] = {"type": "string", "enum": list(options.styles)}
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Generate an image from a detailed text description and show it "
            "to the user in the chat.",
            "parameters": {"type": "object", "properties": properties, "required": ["prompt"]},
        },
    }


class ToolError(ChatimgError):
    """A tool call that failed; the message is shown to the user and the model."""


@dataclass
class ImageRequest:
    prompt: str
    size: str
    quality: str = ""
    style: str = ""
    notes: list[str] = field(default_factory=list)

    def arguments(self) -> dict[str, Any]:
        values = {
            "prompt": self.prompt,
            "size": self.size,
            "quality": self.quality,
            "style": self.style,
        }
        return {key: value for key, value in values.items() if value}


def parse_arguments(raw: str) -> ImageRequest:
    """Validate the model's JSON arguments; models do send garbage sometimes."""
    try:
        # strict=False: small models put raw newlines inside strings (seen from
        # gemma-3-270m on llama-cpp-python); the prompt is still readable.
        arguments = json.loads(raw or "{}", strict=False)
    except json.JSONDecodeError:
        raise ToolError("bad_arguments", "The model sent unreadable tool arguments.") from None
    prompt = arguments.get("prompt") if isinstance(arguments, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise ToolError("bad_arguments", "The model did not say what to draw.")
    options = model_options()
    request = ImageRequest(prompt.strip()[:MAX_PROMPT_CHARS], settings.IMAGE_SIZE)
    for name, allowed in (
        ("size", options.sizes),
        ("quality", options.qualities),
        ("style", options.styles),
    ):
        value = arguments.get(name)
        if value in (None, ""):
            continue
        if value in allowed:
            setattr(request, name, value)
        else:
            request.notes.append(
                f"{name} {value!r} is not supported by {settings.IMAGE_MODEL}; "
                + (f"used {request.size}." if name == "size" else "left out.")
            )
    return request


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


def _upload(name: str, data: bytes) -> str:
    try:
        return default_storage.save(name, ContentFile(data))
    except Exception as exc:
        log.warning("image upload failed: %s", exc)
        raise ToolError("storage_unavailable", "The image could not be saved; try again.") from exc


def _delete_object(name: str) -> None:
    try:
        default_storage.delete(name)
    except Exception:
        log.exception("could not remove object %s after a failed save", name)


def _existing_object(user_id: int, sha256: str) -> str | None:
    """The key of identical bytes this user already has, if any."""
    return (
        GeneratedImage.objects.filter(user_id=user_id, sha256=sha256)
        .values_list("file", flat=True)
        .first()
    )


def estimate_cost(quality: str) -> Decimal | None:
    prices = settings.IMAGE_PRICES
    return prices.get(quality or "*", prices.get("*"))


def reserve_quota(user: Any) -> int | None:
    try:
        return ImageQuota.objects.reserve(user)
    except QuotaExceeded as exc:
        raise ToolError(
            "quota_exceeded",
            f"You have used all {exc.limit} images for today; "
            "the allowance renews at midnight UTC.",
        ) from exc


async def generate(
    invocation: ToolInvocation, request: ImageRequest, *, user: Any, conversation_id: uuid.UUID
) -> tuple[GeneratedImage, int | None]:
    """Run one generate_image call end to end: (stored image, images left today)."""
    remaining = await database_sync_to_async(reserve_quota)(user)
    try:
        image = await _generate(invocation, request, user, conversation_id)
    except BaseException:
        await database_sync_to_async(ImageQuota.objects.release)(user)
        raise
    return image, remaining


async def _generate(
    invocation: ToolInvocation, request: ImageRequest, user: Any, conversation_id: uuid.UUID
) -> GeneratedImage:
    started = time.monotonic()
    try:
        picture = await llm.generate_image(
            request.prompt, size=request.size, quality=request.quality, style=request.style
        )
    except llm.ImageAPIError as exc:
        raise ToolError(exc.code, exc.message) from exc
    decoded = await sync_to_async(decode, thread_sensitive=False)(picture.data)
    image = GeneratedImage(
        id=uuid.uuid4(),
        user=user,
        conversation_id=conversation_id,
        tool_invocation=invocation,
        model=picture.model,
        size=request.size,
        quality=request.quality,
        style=request.style,
        prompt=request.prompt,
        revised_prompt=picture.revised_prompt,
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        sha256=decoded.sha256,
        bytes=len(picture.data),
        cost_usd=estimate_cost(request.quality),
    )
    name = await database_sync_to_async(_existing_object)(user.pk, decoded.sha256)
    uploaded = name is None
    if uploaded:
        name = await sync_to_async(_upload, thread_sensitive=False)(
            image_key(image, ""), picture.data
        )
    image.file.name = name
    image.latency_ms = int((time.monotonic() - started) * 1000)
    try:
        await database_sync_to_async(image.save)(force_insert=True)
    except Exception as exc:
        if uploaded:
            await sync_to_async(_delete_object, thread_sensitive=False)(name)
        raise ToolError("storage_unavailable", "The image could not be recorded.") from exc
    return image
