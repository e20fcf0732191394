"""Images people attach to their messages: validated, cleaned, stored, and read back.

An upload is untrusted bytes. Pillow says what they really are (the name and
the Content-Type the client sent are ignored): PNG, JPEG, WebP or GIF (its
first frame), within a byte limit and a pixel limit checked from the header
before any pixel is decoded, so a decompression bomb (a small file that
declares a huge picture) is refused without allocating it. The picture is
then re-encoded, which drops every metadata block (EXIF with its GPS
position, XMP, text chunks); JPEGs are turned upright first, as their EXIF
orientation said. Only the re-encoded bytes are stored, under an unguessable
key in the images' storage; the row (models.Attachment) keeps only that key.

Uploads count against the daily image quota (docs/images.md says why).
"""

from __future__ import annotations

import hashlib
import io
import logging
import uuid
import warnings
from dataclasses import dataclass
from typing import IO, Any

import pybase64
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image, ImageOps, UnidentifiedImageError

from conversations.models import (
    Attachment,
    ImageQuota,
    QuotaExceeded,
    attachment_key,
)
from conversations.protocol import ChatimgError

log = logging.getLogger(__name__)

#: Pillow's name for the format -> (our format, how it is stored after cleaning).
ACCEPTED = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "png"}


class UploadError(ChatimgError):
    """An upload refused before anything was stored; `status` is the HTTP answer."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(code, message)
        self.status = status


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    format: str
    width: int
    height: int


def _refuse_pixels(width: int, height: int) -> None:
    limit = settings.UPLOAD_MAX_PIXELS
    if width * height > limit:
        raise UploadError(
            "upload_too_many_pixels",
            f"The image is {width}x{height}; images may have at most {limit:,} pixels.",
            413,
        )


def clean(data: bytes) -> CleanImage:
    """The upload's picture, checked and re-encoded without metadata, or UploadError."""
    if len(data) > settings.UPLOAD_MAX_BYTES:
        raise UploadError(
            "upload_too_large",
            f"Images may be at most {settings.UPLOAD_MAX_BYTES // 1024:,} KiB.",
            413,
        )
    try:
        with warnings.catch_warnings():
            # Over Image.MAX_IMAGE_PIXELS Pillow only warns; make that a refusal too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as picture:
                kind = picture.format or ""
                if kind not in ACCEPTED:
                    raise UploadError(
                        "upload_not_image",
                        f"Attach a PNG, JPEG, WebP or GIF image (this is {kind or 'unknown'}).",
                        415,
                    )
                _refuse_pixels(*picture.size)  # from the header: nothing decoded yet
                picture.seek(0)  # a GIF's (or an animated WebP's) first frame
                picture.load()
                return _reencode(picture, ACCEPTED[kind])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(
            "upload_bomb", "The image declares far more pixels than it could hold.", 413
        ) from exc
    except UploadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadError(
            "upload_not_image", "That file is not an image that can be read.", 415
        ) from exc


def _reencode(picture: Image.Image, kind: str) -> CleanImage:
    """Fresh bytes from the pixels alone: EXIF, GPS, XMP and text chunks are not copied."""
    icc = picture.info.get("icc_profile")  # colour, not identity: kept
    if kind == "jpg":
        upright = ImageOps.exif_transpose(picture)
        if upright.mode not in ("RGB", "L"):
            upright = upright.convert("RGB")
        options: dict[str, Any] = {"format": "JPEG", "quality": 90}
    elif kind == "webp":
        upright = picture.convert("RGBA" if "A" in picture.getbands() else "RGB")
        options = {"format": "WEBP", "quality": 90}
    else:
        upright = picture
        if upright.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
            upright = upright.convert("RGBA")
        options = {"format": "PNG", "optimize": False}
    if icc:
        options["icc_profile"] = icc
    out = io.BytesIO()
    upright.save(out, **options)
    width, height = upright.size
    return CleanImage(out.getvalue(), kind, width, height)


def _reserve_quota(user: Any) -> None:
    try:
        ImageQuota.objects.reserve(user)
    except QuotaExceeded as exc:
        raise UploadError(
            "quota_exceeded",
            f"You have used all {exc.limit} images for today (uploads count too); "
            "the allowance renews at midnight UTC.",
            429,
        ) from exc


def store(user: Any, upload: IO[bytes], size: int | None = None) -> Attachment:
    """Validate, clean and store one upload for `user`; UploadError stores nothing.

    Blocks (Pillow and storage): call from a sync view, not the event loop.
    """
    if size is not None and size > settings.UPLOAD_MAX_BYTES:
        raise UploadError(
            "upload_too_large",
            f"Images may be at most {settings.UPLOAD_MAX_BYTES // 1024:,} KiB.",
            413,
        )
    # One byte more than allowed is enough to know it is too much.
    data = upload.read(settings.UPLOAD_MAX_BYTES + 1)
    picture = clean(data)
    _reserve_quota(user)
    attachment = Attachment(
        id=uuid.uuid4(),
        owner=user,
        format=picture.format,
        width=picture.width,
        height=picture.height,
        bytes=len(picture.data),
        sha256=hashlib.sha256(picture.data).hexdigest(),
    )
    try:
        name = default_storage.save(attachment_key(attachment, ""), ContentFile(picture.data))
    except Exception as exc:
        ImageQuota.objects.release(user)
        log.warning("upload could not be stored: %s", exc)
        raise UploadError(
            "storage_unavailable", "The image could not be saved; try again.", 503
        ) from exc
    attachment.file.name = name
    try:
        attachment.save(force_insert=True)
    except Exception:
        ImageQuota.objects.release(user)
        try:
            default_storage.delete(name)
        except Exception:
            log.exception("could not remove upload %s after its row failed", name)
        raise
    return attachment


def read(attachment: Attachment) -> bytes:
    """The stored (cleaned) bytes of an upload. Blocks: storage."""
    with default_storage.open(str(attachment.file.name)) as handle:
        data: bytes = handle.read()
    return data


def data_url(attachment: Attachment) -> str:
    """The upload as a data URL for one request to a vision model: built, sent, forgotten.

    Never stored anywhere (not in a row, not in a frame).
    """
    encoded = pybase64.b64encode(read(attachment)).decode("ascii")  # 50x binascii's speed
    return f"data:{attachment.content_type};base64,{encoded}"


def placeholder(attachment: Attachment) -> str:
    """How a model without vision hears of an upload: an id it can pass to an edit."""
    return f"[image attachment {attachment.id}]"


def purge_unattached() -> int:
    """Delete uploads older than CHATIMG_UPLOAD_UNATTACHED_SECONDS never sent with a message."""
    return Attachment.objects.purge_unattached()
