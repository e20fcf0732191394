"""Conversations with messages and stored images, made directly in the database for tests."""

from __future__ import annotations

import io
import uuid
from typing import Any

from django.core.files.base import ContentFile
from PIL import Image

from conversations.models import (
    Attachment,
    Conversation,
    GeneratedImage,
    Message,
    ToolInvocation,
)


def png(colour: str = "teal", size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def chat(user: Any, title: str, *texts: str) -> Conversation:
    """A conversation of alternating question and answer texts."""
    conversation = Conversation.objects.create(user=user, title=title)
    question = None
    for number, text in enumerate(texts):
        role = Message.Role.USER if number % 2 == 0 else Message.Role.ASSISTANT
        message = conversation.messages.create(
            role=role, text=text, reply_to=question if role == Message.Role.ASSISTANT else None
        )
        question = message if role == Message.Role.USER else None
    return conversation


def add_image(
    conversation: Conversation, prompt: str = "a lighthouse", colour: str = "teal"
) -> GeneratedImage:
    """An answer with text, a generated image (bytes in storage) and more text."""
    question = conversation.messages.create(role=Message.Role.USER, text=f"draw {prompt}")
    answer = conversation.messages.create(
        role=Message.Role.ASSISTANT, reply_to=question, text="Here it is.Done."
    )
    invocation = ToolInvocation.objects.create(
        message=answer,
        call_id=f"call_{uuid.uuid4().hex[:8]}",
        name="generate_image",
        arguments={"prompt": prompt},
        status=ToolInvocation.Status.COMPLETE,
        text_offset=len("Here it is."),
    )
    data = png(colour)
    image = GeneratedImage(
        user=conversation.user,
        conversation=conversation,
        tool_invocation=invocation,
        sha256=uuid.uuid4().hex * 2,
        bytes=len(data),
        width=64,
        height=64,
        model="gpt-image-test",
        prompt=prompt,
        revised_prompt=f"{prompt}, revised",
    )
    image.file.save("x.png", ContentFile(data), save=False)
    image.save()
    return image


def attachment_row(question: Message) -> Attachment:
    """An upload's row on a question, with no object in storage: for what only names it
    (the page's link, the model's "[image attachment <id>]")."""
    return Attachment.objects.create(
        owner_id=question.conversation.user_id,
        conversation=question.conversation,
        message=question,
        file="attachments/a.png",
        format="png",
        width=8,
        height=8,
        bytes=10,
        sha256="0" * 64,
    )
