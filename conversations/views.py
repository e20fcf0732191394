from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.core.files.storage import default_storage
from django.db.models import Prefetch
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_POST

from conversations.auth import session_or_token_required
from conversations.models import ApiToken, Conversation, GeneratedImage, Message


@login_required
def chat(request: HttpRequest, conversation_id: uuid.UUID | None = None) -> HttpResponse:
    conversations = Conversation.objects.filter(user=request.user).only("id", "title", "updated_at")
    conversation = None
    messages: list[Message] = []
    if conversation_id is not None:
        conversation = get_object_or_404(Conversation, pk=conversation_id, user=request.user)
        messages = list(
            conversation.messages.prefetch_related(
                Prefetch("tool_invocations__image", queryset=GeneratedImage.objects.all())
            )
        )
    return render(
        request,
        "conversations/chat.html",
        {
            "conversations": conversations[:100],
            "conversation": conversation,
            "chat_messages": messages,
            "max_message_chars": settings.MAX_MESSAGE_CHARS,
        },
    )


@login_required
@require_POST
def delete_conversation(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = get_object_or_404(Conversation, pk=conversation_id, user=request.user)
    conversation.delete()
    return redirect("chat")


@session_or_token_required
def image(request: HttpRequest, image_id: uuid.UUID) -> HttpResponse:
    """The stable app URL of an image: authorise, then hand over the bytes.

    Pages embed this URL, never a storage URL. On S3 it redirects to a freshly
    presigned URL; on local storage it serves the file itself.
    """
    picture = (
        GeneratedImage.objects.visible_to(request.user)
        .filter(pk=image_id)
        .only("file", "format")
        .first()
    )
    # Someone else's image, or one a moderator hid, is "not found" like a missing one.
    if picture is None:
        raise Http404("No such image.")
    if hasattr(default_storage, "bucket_name"):
        response: HttpResponse = HttpResponseRedirect(default_storage.url(picture.file.name))
        # The redirect target expires; never let anything cache it for longer.
        max_age = max(0, settings.S3_PRESIGN_SECONDS // 2)
        patch_cache_control(response, private=True, max_age=max_age)
        return response
    content_type = "image/jpeg" if picture.format == "jpg" else f"image/{picture.format}"
    response = FileResponse(default_storage.open(picture.file.name), content_type=content_type)
    patch_cache_control(response, private=True, max_age=3600)
    return response


@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    """Personal API tokens for the CLI and other programs; the raw token is shown once."""
    created = None
    error = ""
    if request.method == "POST":
        name = request.POST.get("name", "").strip()[:100]
        if name:
            _, created = ApiToken.issue(request.user, name)
        else:
            error = "Give the token a name, e.g. the machine it is for."
    return render(
        request,
        "conversations/tokens.html",
        {"tokens": request.user.api_tokens.all(), "created": created, "error": error},
    )


@login_required
@require_POST
def revoke_token(request: HttpRequest, token_id: int) -> HttpResponse:
    get_object_or_404(ApiToken, pk=token_id, user=request.user).revoke()
    return redirect("tokens")


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("chat")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("chat")
    return render(request, "registration/signup.html", {"form": form})
