"""The edit path's own overhead for a 1024x1024 PNG: source read + upload + rows.

    .venv/bin/python -m bench.edit_path --runs 30

In one process, against a fake provider that answers at once with a fixed
1024x1024 PNG (so the provider's drawing time is zero and what is measured is
ours): `images.generate()` for an `edit_image` request (the ORM lookup and the
storage read of the source, the multipart upload to /images/edits, the
response's base64 decode, PIL's check, the upload of the result to storage and
the rows with their lineage) against the same for a `generate_image` request
(no source, a JSON request). The difference is what an edit adds. Storage is
local files on a temporary directory, SQLite a temporary file: the figures
are the app's code path, not S3's or PostgreSQL's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def _setup(workdir: Path) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "chatimg.settings",
            "SQLITE_PATH": str(workdir / "db.sqlite3"),
            "MEDIA_ROOT": str(workdir / "media"),
            "CHATIMG_STREAM_DIR": str(workdir / "streams"),
            "OPENAI_API_KEY": "sk-bench",
            "CHATIMG_IMAGE_MODEL": "gpt-image-bench",
            "CHATIMG_IMAGE_PREVIEWS": "0",
            "CHATIMG_IMAGES_PER_DAY": "100000",
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def photo_png() -> bytes:
    """A 1024x1024 PNG that compresses like a photograph (about 3 MB), deterministic."""
    import io

    from PIL import Image

    bands = [Image.effect_noise((1024, 1024), sigma) for sigma in (40, 50, 60)]
    buffer = io.BytesIO()
    Image.merge("RGB", bands).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


async def measure(runs: int, kind_of_png: str) -> dict[str, Any]:
    from asgiref.sync import sync_to_async
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from conversations import images
    from conversations.models import Conversation, Message, ToolInvocation
    from offline_model import Handler, OfflineModelServer, render_image

    png = photo_png() if kind_of_png == "photo" else render_image("a lighthouse", 1024, 1024)

    class Instant(Handler):
        """Draws nothing: the same PNG at once, for generations and edits alike."""

        def render(self, prompt: str, width: int, height: int) -> bytes:
            return png

        def edit(self, sources: list[bytes], prompt: str, size: Any, mask: Any, v: int) -> bytes:
            return png

    def make_call(conversation: Conversation, name: str) -> ToolInvocation:
        message = Message.objects.create(conversation=conversation, role="assistant", text="")
        return ToolInvocation.objects.create(message=message, call_id="c", name=name)

    with OfflineModelServer(handler=Instant) as server:
        settings.OPENAI_BASE_URL = settings.OPENAI_IMAGE_BASE_URL = server.base_url
        user = await sync_to_async(get_user_model().objects.create_user)(f"b{uuid.uuid4().hex[:8]}")
        conversation = await Conversation.objects.acreate(user=user, title="bench")
        first = await sync_to_async(make_call)(conversation, "generate_image")
        source = (
            await images.generate(
                first,
                images.ImageRequest("a lighthouse", "1024x1024"),
                user=user,
                conversation_id=conversation.id,
            )
        ).images[0]
        timings: dict[str, list[float]] = {"generate": [], "edit": [], "resolve": []}
        for index in range(runs):
            for kind in ("generate", "edit"):
                call = await sync_to_async(make_call)(conversation, f"{kind}_image")
                request = images.ImageRequest(f"run {index} {kind}", "1024x1024")
                if kind == "edit":
                    request.image_ids = [str(source.id)]
                started = time.perf_counter()
                await images.generate(call, request, user=user, conversation_id=conversation.id)
                timings[kind].append(time.perf_counter() - started)
            started = time.perf_counter()
            await images.resolve_sources(user, conversation.id, [str(source.id)])
            timings["resolve"].append(time.perf_counter() - started)

    def ms(values: list[float], q: float) -> float:
        return round(1000 * percentile(values, q), 1)

    added = [e - g for e, g in zip(timings["edit"], timings["generate"], strict=True)]
    return {
        "runs": runs,
        "png_bytes": len(png),
        "generate_p50_ms": ms(timings["generate"], 50),
        "generate_p95_ms": ms(timings["generate"], 95),
        "edit_p50_ms": ms(timings["edit"], 50),
        "edit_p95_ms": ms(timings["edit"], 95),
        "edit_added_p50_ms": round(1000 * statistics.median(added), 1),
        "source_read_p50_ms": ms(timings["resolve"], 50),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--png",
        choices=("photo", "drawing"),
        default="photo",
        help="photo: noise that compresses like a photograph (~3 MB); "
        "drawing: the offline model's flat shapes (~40 kB)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatimg-bench-edit-") as workdir:
        _setup(Path(workdir))
        result = asyncio.run(measure(args.runs, args.png))
    for key, value in result.items():
        print(f"{key:>20}: {value}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
