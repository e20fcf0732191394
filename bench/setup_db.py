"""Migrate the bench database and create users with one API token each.

    DJANGO_SETTINGS_MODULE=chatimg.settings SQLITE_PATH=... \
        .venv/bin/python -m bench.setup_db --users 400 --out tokens.json

Run by bench.run with the same environment as the server it then starts.

``--long-chat 500 --long-images 100 --long-out long.json`` also creates a user
with one conversation of 500 messages (user and assistant in turn, Markdown
answers), 100 of whose answers made an image: tool invocation + image row + a
real PNG object in the configured storage (local MEDIA_ROOT in the bench), and
a logged-in session for that user. long.json holds the conversation id and the
session cookie, for the "open" scenario (GET /c/<id>/).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
from typing import Any

ANSWER = (
    "Here is a **longer answer** with a list and some code, as models write them:\n\n"
    "1. The first point, with `inline code` and a [link](https://example.com/docs).\n"
    "2. The second point, which goes on for a while so that the paragraph wraps on "
    "a phone screen and the renderer has real work to do.\n\n"
    "```python\ndef answer(n: int) -> int:\n    return n * 42\n```\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n"
    "> A quote to finish, message {n}.\n"
)


def _png(index: int) -> bytes:
    """A small PNG whose bytes differ per index (each image its own object)."""
    from PIL import Image

    picture = Image.new("RGB", (64, 64), (index * 37 % 256, index * 91 % 256, index * 13 % 256))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def long_chat(messages: int, with_images: int) -> dict[str, Any]:
    import uuid
    from datetime import timedelta

    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.db import transaction
    from django.utils import timezone

    from conversations.models import (
        Conversation,
        GeneratedImage,
        Message,
        ToolInvocation,
        image_key,
    )

    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username="benchlong")
    start = timezone.now() - timedelta(days=1)
    answers = messages // 2
    # Spread the images evenly over the answers.
    image_answers = {round(i * answers / with_images) for i in range(with_images)}
    with transaction.atomic():
        conversation = Conversation.objects.create(user=user, title="A long conversation")
        rows = []
        for n in range(messages):
            at = start + timedelta(seconds=n)
            if n % 2 == 0:
                rows.append(
                    Message(
                        conversation=conversation,
                        role=Message.Role.USER,
                        text=f"Question {n}: draw me something and explain it, please.",
                        client_message_id=f"long-{n}",
                        created_at=at,
                        updated_at=at,
                    )
                )
            else:
                rows.append(
                    Message(
                        conversation=conversation,
                        role=Message.Role.ASSISTANT,
                        text=ANSWER.format(n=n),
                        model="bench",
                        usage={"prompt_tokens": 100, "completion_tokens": 120},
                        created_at=at,
                        updated_at=at,
                    )
                )
        Message.objects.bulk_create(rows)
        stored = list(conversation.messages.order_by("id"))
        # bulk_create skips Message.save: each message follows the one before it (one path).
        for before, message in itertools.pairwise(stored):
            message.parent_id = before.pk
        Message.objects.bulk_update(stored, ["parent"], batch_size=500)
        for index, answer in enumerate(m for m in stored if m.role == Message.Role.ASSISTANT):
            answer.reply_to_id = stored[stored.index(answer) - 1].pk
            answer.save(update_fields=["reply_to"])
            if index not in image_answers:
                continue
            invocation = ToolInvocation.objects.create(
                message=answer,
                call_id=f"call_long_{index}",
                name="generate_image",
                arguments={"prompt": f"picture number {index}"},
                status=ToolInvocation.Status.COMPLETE,
                text_offset=len(answer.text) // 2,
                finished_at=answer.created_at,
            )
            data = _png(index)
            image = GeneratedImage(
                id=uuid.uuid4(),
                user=user,
                conversation=conversation,
                tool_invocation=invocation,
                model="bench",
                size="1024x1024",
                prompt=f"picture number {index}",
                format="png",
                width=64,
                height=64,
                sha256=f"{index:064x}",
                bytes=len(data),
            )
            image.file.name = default_storage.save(image_key(image, ""), ContentFile(data))
            image.save(force_insert=True)
            invocation.result = {
                "status": "ok",
                "image_id": str(image.id),
                "prompt": image.prompt,
                "revised_prompt": None,
            }
            invocation.save(update_fields=["result"])
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return {
        "conversation_id": str(conversation.pk),
        "messages": conversation.messages.count(),
        "images": GeneratedImage.objects.filter(conversation=conversation).count(),
        "cookie": f"{settings.SESSION_COOKIE_NAME}={session.session_key}",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--out", required=True)
    parser.add_argument("--long-chat", type=int, default=0, help="messages in the long chat")
    parser.add_argument("--long-images", type=int, default=100)
    parser.add_argument("--long-out", help="where to write the long chat's id and cookie")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatimg.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import transaction

    from conversations.models import ApiToken

    call_command("migrate", verbosity=0, interactive=False)
    user_model = get_user_model()
    tokens = []
    with transaction.atomic():
        for i in range(args.users):
            user, _ = user_model.objects.get_or_create(username=f"bench{i:04d}")
            _, raw = ApiToken.issue(user, "bench")
            tokens.append(raw)
    with open(args.out, "w") as out:
        json.dump(tokens, out)
    if args.long_chat:
        result = long_chat(args.long_chat, args.long_images)
        with open(args.long_out, "w") as out:
            json.dump(result, out)


if __name__ == "__main__":
    main()
