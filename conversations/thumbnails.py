"""Small WebP copies of images and uploads, made once and kept in storage.

The admin's review list and the gallery show dozens of pictures at once: the
full PNGs scaled by the browser would be megabytes each. The first request for
a thumbnail makes it (Pillow, in a sync view) and stores it under its own key
(models.thumbnail_key, derived from the row's unguessable id), which the row
then records (`thumbnail`); later requests serve the stored copy without
asking storage first. The thumbnail is deleted with its row, through the same
PendingDeletion debt as the picture.
"""

from __future__ import annotations

import io
import logging

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from conversations.models import Attachment, GeneratedImage, thumbnail_key

log = logging.getLogger(__name__)

#: The longest side of a thumbnail, in pixels (the admin shows 96 px, the gallery ~200).
SIZE = 256


def render(source: bytes) -> bytes:
    with Image.open(io.BytesIO(source)) as picture:
        picture.seek(0)
        picture.thumbnail((SIZE, SIZE))
        small = picture.convert("RGBA" if "A" in picture.getbands() else "RGB")
    out = io.BytesIO()
    small.save(out, format="WEBP", quality=80)
    return out.getvalue()


def ensure(row: GeneratedImage | Attachment) -> str:
    """The storage key of the row's thumbnail, made now if there is none yet. Blocks."""
    if row.thumbnail:
        return row.thumbnail
    key = thumbnail_key("a" if isinstance(row, Attachment) else "i", row.pk)
    with default_storage.open(str(row.file.name)) as handle:
        data = render(handle.read())
    saved = default_storage.save(key, ContentFile(data))
    if saved != key:
        # Two first views at once, on a storage that renames instead of overwriting:
        # keep the one under the real key, drop the copy nobody would ever delete.
        default_storage.delete(saved)
    type(row).objects.filter(pk=row.pk).update(thumbnail=key)
    row.thumbnail = key
    return key
