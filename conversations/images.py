"""The generate_image tool: its schema and options, and turning a call into a stored image.

Bytes go to object storage through Django's storage API, off the event loop and
off the single thread that serves the ORM; the database row is written only
once the object exists, and the object is removed again if the row cannot be
written, so there is never an object without a row or a row without an object.
Identical bytes are stored once per user: a repeat points at the same object.
"""

from __future__ import annotations

import base64
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
from django.db import transaction
from PIL import Image, UnidentifiedImageError

from conversations import dbpool, llm
from conversations.models import (
    Attachment,
    GeneratedImage,
    ImageQuota,
    QuotaExceeded,
    ToolInvocation,
    image_key,
)
from conversations.protocol import ChatimgError

log = logging.getLogger(__name__)

TOOL_NAME = "generate_image"
EDIT_TOOL_NAME = "edit_image"
TOOL_NAMES = (TOOL_NAME, EDIT_TOOL_NAME)
MAX_PROMPT_CHARS = 4000
ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


@dataclass(frozen=True)
class ModelOptions:
    sizes: tuple[str, ...]
    qualities: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()
    max_n: int = 1  # images per call (CHATIMG_IMAGE_MAX_N overrides)
    edits: bool = True  # offer edit_image (a provider without the endpoint is a typed error)
    max_inputs: int = 1  # source images per edit
    previews: int = 0  # partial images to stream (CHATIMG_IMAGE_PREVIEWS overrides)


# What each image model accepts, by name prefix (longest match wins). Values
# outside these are dropped with a note instead of failing upstream.
# Sources: OpenAI's image API reference (gpt-image: n up to 10, up to 16 edit
# inputs, partial_images up to 3; dall-e-3: n=1 and no edits; dall-e-2: one
# input). The defaults stay modest: n up to 4, 2 previews.
KNOWN_MODELS = {
    "gpt-image": ModelOptions(
        ("1024x1024", "1024x1536", "1536x1024", "auto"),
        ("low", "medium", "high", "auto"),
        max_n=4,
        max_inputs=16,
        previews=2,
    ),
    "dall-e-3": ModelOptions(
        ("1024x1024", "1792x1024", "1024x1792"),
        ("standard", "hd"),
        ("vivid", "natural"),
        edits=False,
    ),
    "dall-e-2": ModelOptions(("256x256", "512x512", "1024x1024"), max_n=4),
    "offline-image": ModelOptions(
        ("256x256", "512x512", "1024x1024", "1024x1536", "1536x1024"),
        ("low", "medium", "high"),
        ("vivid", "natural"),
        max_n=4,
        max_inputs=4,
        previews=2,
    ),
}


def _by_prefix(table: dict[str, Any], model: str) -> Any:
    """The entry whose key is the longest prefix of `model` ("*" matches any), or None."""
    for prefix in sorted(table, key=len, reverse=True):
        if prefix == "*" or model.startswith(prefix):
            return table[prefix]
    return table.get("*")


def model_options() -> ModelOptions:
    """The allow-lists for the configured image model; env settings override the table."""
    model = settings.IMAGE_MODEL
    known: ModelOptions = _by_prefix(KNOWN_MODELS, model) or ModelOptions(())
    sizes = tuple(settings.IMAGE_SIZES) or known.sizes
    if settings.IMAGE_SIZE not in sizes:  # the operator's default is always allowed
        sizes = (settings.IMAGE_SIZE, *sizes)
    max_n = _by_prefix(settings.IMAGE_MAX_N, model)
    previews = _by_prefix(settings.IMAGE_PREVIEWS, model)
    return ModelOptions(
        sizes,
        tuple(settings.IMAGE_QUALITIES) or known.qualities,
        tuple(settings.IMAGE_STYLES) or known.styles,
        max_n=max(1, known.max_n if max_n is None else max_n),
        edits=known.edits,
        max_inputs=known.max_inputs,
        previews=known.previews if previews is None else previews,
    )


def _common_properties(options: ModelOptions, *, styles: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    if len(options.sizes) > 1:
        properties["size"] = {
            "type": "string",
            "enum": list(options.sizes),
            "description": f"Image size; default {settings.IMAGE_SIZE}.",
        }
    if options.qualities:
        properties["quality"] = {"type": "string", "enum": list(options.qualities)}
    if styles and options.styles:
        properties["style"] = {"type": "string", "enum": list(options.styles)}
    if options.max_n > 1:
        properties["n"] = {
            "type": "integer",
            "minimum": 1,
            "maximum": options.max_n,
            "description": "How many different images to make (default 1); "
            "only when the user asks for several or for variations.",
        }
    return properties


def tool_schema() -> dict[str, Any]:
    """generate_image as the model sees it: only options the image model supports."""
    options = model_options()
    properties: dict[str, Any] = {
        "prompt": {"type": "string", "description": "A detailed description of the image."},
        **_common_properties(options, styles=True),
    }
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Generate an image from a detailed text description and show it "
            "to the user in the chat.",
            "parameters": {"type": "object", "properties": properties, "required": ["prompt"]},
        },
    }


def edit_tool_schema() -> dict[str, Any]:
    """edit_image: change images of this conversation, named by the image_id results gave."""
    options = model_options()
    properties: dict[str, Any] = {
        "image_ids": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": options.max_inputs,
            "description": "The image_id of each image to start from, as earlier "
            "generate_image or edit_image results gave it; the first is the one changed"
            + (", the others are references." if options.max_inputs > 1 else "."),
        },
        "prompt": {
            "type": "string",
            "description": "What to change, or the whole new picture, in words.",
        },
        "mask_id": {
            "type": "string",
            "description": "Optional: the image_id of a PNG mask whose transparent "
            "pixels mark where to edit the first image.",
        },
        **_common_properties(options, styles=False),
    }
    return {
        "type": "function",
        "function": {
            "name": EDIT_TOOL_NAME,
            "description": "Edit one or more images already shown in this chat "
            '("make it night", "put the fox from the first picture in this one") '
            "and show the result. Use this, not generate_image, to change an earlier image.",
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": ["image_ids", "prompt"],
            },
        },
    }


def tool_schemas() -> list[dict[str, Any]]:
    """Every image tool this image model supports."""
    schemas = [tool_schema()]
    if model_options().edits:
        schemas.append(edit_tool_schema())
    return schemas


class ToolError(ChatimgError):
    """A tool call that failed; the message is shown to the user and the model."""


@dataclass
class ImageRequest:
    prompt: str
    size: str
    quality: str = ""
    style: str = ""
    n: int = 1
    # An edit_image call: the sources (first is the one edited) and an optional mask.
    image_ids: list[str] = field(default_factory=list)
    mask_id: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def is_edit(self) -> bool:
        return bool(self.image_ids)

    def arguments(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "prompt": self.prompt,
            "image_ids": self.image_ids,
            "mask_id": self.mask_id,
            "size": self.size,
            "quality": self.quality,
            "style": self.style,
            "n": self.n if self.n > 1 else None,
        }
        return {key: value for key, value in values.items() if value}


def parse_arguments(raw: str, name: str = TOOL_NAME) -> ImageRequest:
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
    for option, allowed in (
        ("size", options.sizes),
        ("quality", options.qualities),
        ("style", options.styles if name == TOOL_NAME else ()),
    ):
        value = arguments.get(option)
        if value in (None, ""):
            continue
        if value in allowed:
            setattr(request, option, value)
        else:
            request.notes.append(
                f"{option} {value!r} is not supported by {settings.IMAGE_MODEL}; "
                + (f"used {request.size}." if option == "size" else "left out.")
            )
    request.n = _count(arguments.get("n"), options.max_n, request.notes)
    if name == EDIT_TOOL_NAME:
        request.image_ids, request.mask_id = _sources(arguments, options.max_inputs)
    return request


def _count(value: Any, limit: int, notes: list[str]) -> int:
    if value in (None, "", 1):
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ToolError("bad_arguments", "n must be a whole number of images, 1 or more.")
    if value > limit:
        notes.append(f"{settings.IMAGE_MODEL} makes at most {limit} per call here; made {limit}.")
        return limit
    return value


def _sources(arguments: dict[str, Any], limit: int) -> tuple[list[str], str]:
    ids = arguments.get("image_ids")
    if isinstance(ids, str):  # one id where a list was asked: small models do that
        ids = [ids]
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(value, str) and value.strip() for value in ids)
    ):
        raise ToolError("bad_arguments", "The model did not say which image to edit.")
    ids = list(dict.fromkeys(value.strip() for value in ids))  # in order, without repeats
    if len(ids) > limit:
        raise ToolError(
            "too_many_sources",
            f"{settings.IMAGE_MODEL} edits from at most {limit} image(s) at a time.",
        )
    mask = arguments.get("mask_id")
    if mask not in (None, "") and not isinstance(mask, str):
        raise ToolError("bad_arguments", "mask_id must be an image id.")
    return ids, (mask or "").strip()


# --- the images an edit starts from -------------------------------------------------


@dataclass(frozen=True)
class SourceImage:
    """One input of an edit, read from storage (never from the model's context)."""

    id: str
    name: str  # the file name sent upstream: never the user's text
    data: bytes
    content_type: str
    # The drawn image it came from: the new image's parent. None for an image
    # the user attached (an Attachment: the lineage records drawn parents only).
    generated: GeneratedImage | None = None

    def as_file(self) -> llm.ImageFile:
        return (self.name, self.data, self.content_type)


_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def _not_found(value: str) -> ToolError:
    # The same answer for a typo, a deleted image and another user's image.
    return ToolError("image_not_found", f"There is no image {value[:60]!r} in this conversation.")


def find_sources(
    user: Any, conversation_id: uuid.UUID, ids: list[str]
) -> list[GeneratedImage | Attachment]:
    """The rows for these ids, in their order: the conversation's drawn images and the
    images the user attached to its messages. Any id that is not this user's AND this
    conversation's (a hidden image, an upload never sent) is `image_not_found`, nothing
    more said.

    Runs on the ORM thread.
    """
    wanted: dict[str, uuid.UUID] = {}
    for value in ids:
        try:
            wanted[value] = uuid.UUID(value)
        except (ValueError, AttributeError):
            raise _not_found(value) from None
    rows: dict[uuid.UUID, GeneratedImage | Attachment] = {
        row.id: row
        for row in GeneratedImage.objects.filter(
            id__in=wanted.values(), user=user, conversation_id=conversation_id
        ).exclude(review_status=GeneratedImage.Review.HIDDEN)
    }
    if len(rows) < len(wanted):
        rows.update(
            (row.id, row)
            for row in Attachment.objects.filter(
                id__in=wanted.values(), owner=user, conversation_id=conversation_id
            ).exclude(message=None)
        )
    found = []
    for value, pk in wanted.items():
        if pk not in rows:
            raise _not_found(value)
        found.append(rows[pk])
    return found


def _read(image: GeneratedImage | Attachment) -> bytes:
    try:
        with default_storage.open(image.file.name or "", "rb") as handle:
            data: bytes = handle.read(settings.IMAGE_MAX_BYTES + 1)
    except Exception as exc:
        log.warning("could not read image %s for an edit: %s", image.pk, exc)
        raise ToolError(
            "storage_unavailable", "A source image could not be read; try again."
        ) from exc
    if len(data) > settings.IMAGE_MAX_BYTES:
        raise ToolError("image_too_large", "A source image is too large to edit.")
    return data


async def resolve_sources(
    user: Any, conversation_id: uuid.UUID, ids: list[str]
) -> list[SourceImage]:
    """The edit's inputs by id: checked (owner and conversation), then read from storage.

    The one place an edit gets its bytes: the lookup on the ORM thread, the
    reads off the event loop and off that thread.
    """
    rows = await database_sync_to_async(find_sources)(user, conversation_id, ids)
    sources = []
    for position, row in enumerate(rows):
        data = await sync_to_async(_read, thread_sensitive=False)(row)
        extension = row.format or "png"
        sources.append(
            SourceImage(
                str(row.id),
                f"image-{position}.{extension}",
                data,
                row.content_type
                if isinstance(row, Attachment)
                else _CONTENT_TYPES.get(extension, "image/png"),
                row if isinstance(row, GeneratedImage) else None,
            )
        )
    return sources


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


def reserve_quota(user: Any, count: int = 1) -> int | None:
    try:
        return ImageQuota.objects.reserve(user, count)
    except QuotaExceeded as exc:
        if count > 1 and exc.left > 0:
            raise ToolError(
                "quota_exceeded",
                f"Only {exc.left} of today's {exc.limit} images are left; ask for fewer.",
            ) from exc
        raise ToolError(
            "quota_exceeded",
            f"You have used all {exc.limit} images for today; "
            "the allowance renews at midnight UTC.",
        ) from exc


@dataclass
class Outcome:
    """What one tool call made: its images (in order), their parents, images left today."""

    images: list[GeneratedImage]
    parents: list[GeneratedImage]
    remaining: int | None


#: Called with (image index, partial index, preview bytes) while an image is drawn.
PreviewSink = llm.PreviewSink


async def generate(
    invocation: ToolInvocation,
    request: ImageRequest,
    *,
    user: Any,
    conversation_id: uuid.UUID,
    on_preview: PreviewSink | None = None,
) -> Outcome:
    """Run one generate_image or edit_image call end to end.

    `request.n` images are reserved from the quota first; whatever is not
    made (all on failure, the shortfall if the provider sent fewer) is
    given back.
    """
    remaining = await database_sync_to_async(reserve_quota)(user, request.n)
    made = 0
    try:
        outcome = await _generate(invocation, request, user, conversation_id, on_preview, remaining)
        made = len(outcome.images)
    finally:
        if made < request.n:
            await database_sync_to_async(ImageQuota.objects.release)(user, request.n - made)
    return outcome


def tool_result(outcome: Outcome, request: ImageRequest) -> dict[str, Any]:
    """What the model is told about a call's images (the invocation's `result`)."""
    made = outcome.images
    result: dict[str, Any] = {
        "status": "ok",
        "image_id": str(made[0].id),
        "prompt": made[0].prompt,
        "revised_prompt": made[0].revised_prompt or None,
    }
    if len(made) > 1:
        result["image_ids"] = [str(image.id) for image in made]
    if outcome.parents:
        result["edited_from"] = [str(parent.id) for parent in outcome.parents]
    notes = list(request.notes)
    if len(made) < request.n:
        notes.append(f"The image service made {len(made)} of the {request.n} asked for.")
    if notes:
        result["notes"] = notes
    if outcome.remaining is not None:
        result["images_left_today"] = outcome.remaining
    return result


async def _generate(
    invocation: ToolInvocation,
    request: ImageRequest,
    user: Any,
    conversation_id: uuid.UUID,
    on_preview: PreviewSink | None,
    remaining: int | None,
) -> Outcome:
    started = time.monotonic()
    sources: list[SourceImage] = []
    previews = model_options().previews if on_preview is not None else 0
    try:
        if request.is_edit:
            sources = await resolve_sources(user, conversation_id, request.image_ids)
            mask = None
            if request.mask_id:
                mask = (await resolve_sources(user, conversation_id, [request.mask_id]))[0]
            pictures = await llm.edit_images(
                request.prompt,
                [source.as_file() for source in sources],
                mask=mask.as_file() if mask else None,
                size=request.size,
                quality=request.quality,
                n=request.n,
                partial_images=previews,
                on_preview=on_preview,
            )
        else:
            pictures = await llm.generate_images(
                request.prompt,
                size=request.size,
                quality=request.quality,
                style=request.style,
                n=request.n,
                partial_images=previews,
                on_preview=on_preview,
            )
    except llm.ImageAPIError as exc:
        raise ToolError(exc.code, exc.message, retryable=exc.retryable) from exc
    parents = [source.generated for source in sources if source.generated is not None]
    decoded = [
        await sync_to_async(decode, thread_sensitive=False)(picture.data) for picture in pictures
    ]
    images = [
        GeneratedImage(
            id=uuid.uuid4(),
            user=user,
            conversation_id=conversation_id,
            tool_invocation=invocation,
            index=index,
            model=picture.model,
            size=request.size,
            quality=request.quality,
            style=request.style,
            prompt=request.prompt,
            revised_prompt=picture.revised_prompt,
            format=facts.format,
            width=facts.width,
            height=facts.height,
            sha256=facts.sha256,
            bytes=len(picture.data),
            cost_usd=estimate_cost(request.quality),
        )
        for index, (picture, facts) in enumerate(zip(pictures, decoded, strict=True))
    ]
    # Images left today: the reservation gives back what the provider did not make.
    left = None if remaining is None else remaining + request.n - len(images)
    outcome = Outcome(images, parents, left)
    uploaded: list[str] = []
    try:
        # The image path's trips to the database go to the turn pool (PostgreSQL),
        # not behind every other socket's work on channels' one thread.
        for image, picture in zip(images, pictures, strict=True):
            name = await dbpool.run(_existing_object)(user.pk, image.sha256)
            if name is None:
                name = await sync_to_async(_upload, thread_sensitive=False)(
                    image_key(image, ""), picture.data
                )
                uploaded.append(name)
            image.file.name = name
        latency = int((time.monotonic() - started) * 1000)
        for image in images:
            image.latency_ms = latency
        await dbpool.run(_record)(images, parents, invocation, tool_result(outcome, request))
    except BaseException as exc:
        for name in uploaded:
            await sync_to_async(_delete_object, thread_sensitive=False)(name)
        if isinstance(exc, ToolError):
            raise
        if isinstance(exc, Exception):
            raise ToolError("storage_unavailable", "The image could not be recorded.") from exc
        raise
    return outcome


def _record(
    images: list[GeneratedImage],
    parents: list[GeneratedImage],
    invocation: ToolInvocation,
    result: dict[str, Any],
) -> None:
    """The rows of one call, their lineage and the invocation's completion, all or
    none: one transaction, one trip fewer on the way to tool.completed than a
    separate UPDATE after it."""
    with transaction.atomic():
        for image in images:
            image.save(force_insert=True)
            if parents:
                image.parents.set(parents)
        invocation.complete(result)


@dataclass(frozen=True)
class Preview:
    data_url: str
    width: int
    height: int


def preview_data_url(data: bytes) -> Preview:
    """A partial image made small for a tool.preview frame: a JPEG data URL.

    Downscaled (CHATIMG_IMAGE_PREVIEW_PX on its longest side) so that a frame
    stays a few kB however large the provider's partial image is; never stored.
    """
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.draft("RGB", (settings.IMAGE_PREVIEW_PX, settings.IMAGE_PREVIEW_PX))
            small = picture.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ToolError("image_corrupt", "A preview was not an image.") from exc
    small.thumbnail((settings.IMAGE_PREVIEW_PX, settings.IMAGE_PREVIEW_PX))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=70)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Preview(f"data:image/jpeg;base64,{encoded}", small.width, small.height)
