"""The HTTP side: the chat page, the conversation list, images, API tokens, account pages."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET, require_POST

from conversations import protocol, runtime
from conversations.auth import AuthenticatedHttpRequest, session_or_token_required
from conversations.models import (
    ApiToken,
    Conversation,
    GeneratedImage,
    ImageQuota,
    Message,
)
from conversations.rendering import client_policy

#: Sidebar entries per page (the first page is in the chat page, the rest load on demand).
CONVERSATIONS_PER_PAGE = 30

#: Messages a chat page opens with: the latest ones of the active branch; "Show
#: earlier messages" loads the ones before, this many at a time. A 500-message
#: chat with 100 images took 200-400 ms to render whole, and people read a chat
#: from its end (issue 12, docs/benchmarks.md).
MESSAGES_PER_PAGE = 60

#: Plain sentences for the error codes of protocol v1 (conversations/protocol.py).
#: The page shows these, with the server's own message as detail; chat.js reads the
#: same table (json_script).
ERROR_TEXTS = protocol.page_texts()


def conversation_page(
    user: User, cursor: tuple[datetime, uuid.UUID] | None = None, *, quota: bool = False
) -> tuple[list[Conversation], str | None]:
    """One page of the sidebar and the URL of the next one (or None).

    With `quota`, each entry carries `images_used` today: the chat page's count
    rides on a query it makes anyway (one round trip fewer; issue 12).
    """
    rows = Conversation.objects.filter(user=user)
    if quota:
        rows = rows.annotate(images_used=ImageQuota.objects.used_today(user))
    page, after = rows.page(cursor, CONVERSATIONS_PER_PAGE)
    if after is None:
        return page, None
    query = urlencode({"before": after[0].isoformat(), "id": str(after[1])})
    return page, f"{reverse('conversation_list')}?{query}"


def wants_json(request: HttpRequest) -> bool:
    """The page's fetch() asks for JSON; a plain form post gets a redirect."""
    return request.get_preferred_type(["text/html", "application/json"]) == "application/json"


@login_required
def chat(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID | None = None
) -> HttpResponse:
    conversations, next_page = conversation_page(request.user, quota=True)
    conversation = None
    messages: list[Message] = []
    earlier_page = None
    if conversation_id is not None:
        # The active branch only (its latest messages); each message knows its
        # versions (for "2 / 3").
        opened = Conversation.objects.opened(request.user, conversation_id, limit=MESSAGES_PER_PAGE)
        if opened is None:
            # Missing or someone else's: the app's own page, in development too
            # (Http404 would show Django's debug page there, with the URL list).
            return render(request, "404.html", status=404)
        conversation, messages, earlier = opened
        earlier_page = messages_page_url(conversation, messages) if earlier else None
    # Read by the sidebar's query; by one of its own for someone with no chat yet.
    images_used = conversations[0].images_used if conversations else None  # type: ignore[attr-defined]
    response = render(
        request,
        "conversations/chat.html",
        {
            "conversations": conversations,
            "next_page": next_page,
            "conversation": conversation,
            "chat_messages": messages,
            "earlier_page": earlier_page,
            "max_message_chars": settings.MAX_MESSAGE_CHARS,
            "upload_max_bytes": settings.UPLOAD_MAX_BYTES,
            "uploads_per_message": settings.UPLOADS_PER_MESSAGE,
            "images_left": ImageQuota.objects.remaining(request.user, used=images_used),
            "error_texts": ERROR_TEXTS,
            # The server's sanitiser allow-list, for the page's streaming render.
            "render_policy": client_policy(),
        },
    )
    # HTML rendered by this view (first view since RENDER_VERSION changed) is kept.
    Message.objects.store_html(messages)
    return response


def messages_page_url(conversation: Conversation, messages: list[Message]) -> str:
    """The URL of the messages before these (the page's "Show earlier messages")."""
    path = reverse("conversation_messages", args=[conversation.pk])
    return f"{path}?{urlencode({'before': messages[0].pk})}"


@login_required
@require_GET
def conversation_messages(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    """Earlier messages of a chat's active branch: {"html": "<article>…", "next": url or null}."""
    try:
        before = int(request.GET["before"])
    except (KeyError, ValueError):
        return JsonResponse({"error": "before is required"}, status=400)
    opened = Conversation.objects.opened(
        request.user, conversation_id, limit=MESSAGES_PER_PAGE, before=before
    )
    if opened is None:
        return JsonResponse({"error": "No such conversation."}, status=404)
    conversation, messages, earlier = opened
    html = render_to_string("conversations/_messages.html", {"chat_messages": messages}, request)
    Message.objects.store_html(messages)
    return JsonResponse(
        {"html": html, "next": messages_page_url(conversation, messages) if earlier else None}
    )


FAVICON = Path(__file__).parent / "static" / "conversations" / "favicon.ico"


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for on pages that name no icon (the admin's)."""
    response = HttpResponse(FAVICON.read_bytes(), content_type="image/vnd.microsoft.icon")
    patch_cache_control(response, public=True, max_age=86400)
    return response


@login_required
@require_GET
def conversation_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The sidebar's next page: {"html": "<li>…", "next": url or null}."""
    try:
        cursor = (
            datetime.fromisoformat(request.GET["before"]),
            uuid.UUID(request.GET["id"]),
        )
    except (KeyError, ValueError):
        return JsonResponse({"error": "before and id are required"}, status=400)
    conversations, next_page = conversation_page(request.user, cursor)
    html = render_to_string(
        "conversations/_conversation_items.html", {"conversations": conversations}, request
    )
    return JsonResponse({"html": html, "next": next_page})


@login_required
@require_POST
def rename_conversation(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    conversation = get_object_or_404(Conversation, pk=conversation_id, user=request.user)
    try:
        title = conversation.rename(request.POST.get("title", ""))
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    # Other tabs and devices on this conversation update their title too.
    async_to_sync(runtime.publish)(
        conversation.pk,
        protocol.conversation_updated(conversation.pk, title),
    )
    if wants_json(request):
        return JsonResponse({"id": str(conversation.pk), "title": title})
    return redirect(conversation)


@login_required
@require_POST
def delete_conversation(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    conversation = get_object_or_404(Conversation, pk=conversation_id, user=request.user)
    conversation.delete()
    if wants_json(request):
        return JsonResponse({"deleted": str(conversation_id)})
    return redirect("chat")


@session_or_token_required
def image(request: AuthenticatedHttpRequest, image_id: uuid.UUID) -> HttpResponseBase:
    """The stable app URL of an image: authorise, then hand over the bytes.

    Pages embed this URL, never a storage URL. On S3 it redirects to a freshly
    presigned URL; on local storage it serves the file itself.
    """
    picture = (
        GeneratedImage.objects.visible_to(request.user)
        .filter(pk=image_id)
        .only("id", "file", "format")
        .first()
    )
    # Someone else's image, or one a moderator hid, is "not found" like a missing one.
    if picture is None:
        raise Http404("No such image.")
    # ?download=1 asks for "save as": the download attribute of a link is
    # ignored once the redirect leaves our origin, so the storage must say it.
    filename = f"chatimg-{str(picture.pk)[:8]}.{picture.format}"
    download = request.GET.get("download") == "1"
    if hasattr(default_storage, "bucket_name"):
        parameters = (
            {"ResponseContentDisposition": f'attachment; filename="{filename}"'}
            if download
            else None
        )
        response: HttpResponseBase = HttpResponseRedirect(
            # S3Storage.url takes the presign parameters; django-storages is untyped.
            default_storage.url(picture.file.name, parameters=parameters)  # type: ignore[call-arg]
        )
        # The redirect target expires; never let anything cache it for longer.
        max_age = max(0, settings.S3_PRESIGN_SECONDS // 2)
        patch_cache_control(response, private=True, max_age=max_age)
        return response
    content_type = "image/jpeg" if picture.format == "jpg" else f"image/{picture.format}"
    response = FileResponse(
        default_storage.open(str(picture.file.name)),
        content_type=content_type,
        as_attachment=download,
        filename=filename,
    )
    patch_cache_control(response, private=True, max_age=3600)
    return response


#: The raw token travels from the POST to the page that shows it in a short-lived
#: signed cookie, never in the database (only its digest is stored).
NEW_TOKEN_COOKIE = "chatimg_new_token"  # noqa: S105 (a cookie name)


@login_required
def tokens(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Personal API tokens for the CLI and other programs; the raw token is shown once.

    Post/redirect/get: reloading the page that shows a new token shows the
    list, and never creates a second token.
    """
    error = ""
    if request.method == "POST":
        name = request.POST.get("name", "").strip()[:100]
        if name:
            _, raw = ApiToken.issue(request.user, name)
            response: HttpResponse = redirect("tokens")
            response.set_signed_cookie(
                NEW_TOKEN_COOKIE,
                raw,
                salt=f"new-token:{request.user.pk}",
                max_age=120,
                path=reverse("tokens"),
                secure=settings.SESSION_COOKIE_SECURE,
                httponly=True,
                samesite="Strict",
            )
            return response
        error = "Give the token a name, e.g. the machine it is for."
    created = request.get_signed_cookie(
        NEW_TOKEN_COOKIE, default=None, salt=f"new-token:{request.user.pk}", max_age=120
    )
    response = render(
        request,
        "conversations/tokens.html",
        {"tokens": request.user.api_tokens.all(), "created": created, "error": error},
        status=400 if error else 200,
    )
    if created:
        response.delete_cookie(NEW_TOKEN_COOKIE, path=reverse("tokens"), samesite="Strict")
        patch_cache_control(response, no_store=True)
    return response


@login_required
@require_POST
def revoke_token(request: AuthenticatedHttpRequest, token_id: int) -> HttpResponse:
    get_object_or_404(ApiToken, pk=token_id, user=request.user).revoke()
    return redirect("tokens")


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("chat")
    form: UserCreationForm[User] = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("chat")
    return render(request, "registration/signup.html", {"form": form})
