"""Read-only links to a conversation: the owner's endpoints, the public page and its images.

A link is /s/<token>/ (models.Share: how the token is made and checked).
The page needs no login and shows only that conversation; its images are
served through the same token (/s/<token>/images/<id>/), streamed from
storage by the app, so the page never holds a storage URL, signed or not.
A revoked or expired link is a 404 for the page and every image at once.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.db.models import Prefetch
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from conversations.auth import AuthenticatedHttpRequest
from conversations.models import Conversation, GeneratedImage, Message, Share
from conversations.rendering import markdown_html

#: Lifetimes the owner can pick, in days (None: until revoked).
EXPIRY_CHOICES: dict[str, int | None] = {"": None, "0": None, "1": 1, "7": 7, "30": 30}


def share_json(request: HttpRequest, share: Share) -> dict[str, Any]:
    return {
        "id": share.pk,
        "url": request.build_absolute_uri(share.get_absolute_url()),
        "created_at": share.created_at.isoformat(),
        "expires_at": share.expires_at.isoformat() if share.expires_at else None,
        "revoke_url": reverse("revoke_share", args=[share.conversation_id, share.pk]),
    }


@login_required
@require_http_methods(["GET", "POST"])
def shares(request: AuthenticatedHttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """GET: the conversation's live links; POST (days=1|7|30, or none): a new one."""
    # Only the owner's own conversations: another user's is "not found".
    conversation = get_object_or_404(Conversation, pk=conversation_id, user=request.user)
    if request.method == "POST":
        days = request.POST.get("days", "")
        if days not in EXPIRY_CHOICES:
            return JsonResponse({"error": "days is one of 1, 7, 30, or empty"}, status=400)
        share = Share.open(conversation, EXPIRY_CHOICES[days])
        return JsonResponse(share_json(request, share), status=201)
    live = conversation.shares.live()
    return JsonResponse({"shares": [share_json(request, share) for share in live]})


@login_required
@require_POST
def revoke_share(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID, share_id: int
) -> HttpResponse:
    share = get_object_or_404(
        Share, pk=share_id, conversation_id=conversation_id, owner=request.user
    )
    share.revoke()
    return JsonResponse({"revoked": share.pk})


def _no_leaks(response: HttpResponse) -> HttpResponse:
    # The token is in the URL: never cached for later (a revoked link must
    # stop at once), never sent on as a Referer, never indexed.
    patch_cache_control(response, private=True, no_cache=True, max_age=0)
    response["Referrer-Policy"] = "no-referrer"
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response


@require_GET
def shared(request: HttpRequest, token: str) -> HttpResponse:
    """The public, read-only page of a shared conversation (four queries, any length)."""
    share = Share.objects.by_token(token)
    if share is None:
        return _no_leaks(render(request, "404.html", status=404))
    conversation = share.conversation
    messages = (
        conversation.messages.filter(active=True)
        .exclude(status=Message.Status.STREAMING)
        .only("id", "role", "text", "created_at", "conversation_id")
        .prefetch_related(
            Prefetch(
                "tool_invocations__images",
                queryset=GeneratedImage.objects.only(
                    "id",
                    "tool_invocation_id",
                    "index",
                    "prompt",
                    "revised_prompt",
                    "width",
                    "height",
                    "review_status",
                ),
            )
        )
    )
    entries = [_entry(message, token) for message in messages]
    response = render(
        request,
        "conversations/shared.html",
        {"conversation": conversation, "share": share, "entries": entries},
    )
    return _no_leaks(response)


def _entry(message: Message, token: str) -> dict[str, Any]:
    """A message as the shared page shows it: sanitised text, and the images by token."""
    if message.role == Message.Role.USER:
        return {"role": "user", "text": message.text}
    parts: list[dict[str, Any]] = []
    for text, invocation in message.segments():
        if text.strip():
            parts.append({"html": mark_safe(markdown_html(text))})  # noqa: S308 (sanitised by nh3)
        for image in invocation.image_list if invocation is not None else []:
            if image.is_hidden:
                continue
            parts.append(
                {
                    "image": image,
                    "url": reverse("shared_image", args=[token, image.pk]),
                    "caption": image.revised_prompt or image.prompt,
                }
            )
    return {"role": "assistant", "parts": parts}


@require_GET
def shared_image(request: HttpRequest, token: str, image_id: uuid.UUID) -> FileResponse:
    """An image of the shared conversation, streamed by the app (no storage URL leaves it)."""
    share = Share.objects.by_token(token)
    if share is None:
        raise Http404("No such link.")
    picture = (
        GeneratedImage.objects.filter(pk=image_id, conversation_id=share.conversation_id)
        .exclude(review_status=GeneratedImage.Review.HIDDEN)
        .only("id", "file", "format")
        .first()
    )
    if picture is None:
        raise Http404("No such image.")
    content_type = "image/jpeg" if picture.format == "jpg" else f"image/{picture.format}"
    response = FileResponse(default_storage.open(str(picture.file.name)), content_type=content_type)
    patch_cache_control(response, private=True, no_cache=True, max_age=0)
    response["Referrer-Policy"] = "no-referrer"
    return response
