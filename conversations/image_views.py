"""The HTTP side of pictures people keep: uploads, their URLs, thumbnails, the gallery.

Like the image URL (views.image), every URL here is the app's own: it checks
who asks, then redirects to a short-lived presigned URL (S3) or serves the
file (local storage). Someone else's picture is "not found", as a missing one.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.http import (
    FileResponse,
    Http404,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import render
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET, require_POST

from conversations import attachments, thumbnails
from conversations.auth import (
    AuthenticatedHttpRequest,
    session_csrf_or_token_required,
    session_or_token_required,
)
from conversations.models import (
    Attachment,
    Conversation,
    GeneratedImage,
    ImageQuota,
    NotFound,
)

#: Pictures per gallery page.
GALLERY_PAGE_SIZE = 24


def serve_object(
    name: str, content_type: str, filename: str, *, download: bool = False
) -> HttpResponseBase:
    """Hand over a stored object the viewer may see: presigned redirect or the file."""
    if hasattr(default_storage, "bucket_name"):
        parameters = (
            {"ResponseContentDisposition": f'attachment; filename="{filename}"'}
            if download
            else None
        )
        response: HttpResponseBase = HttpResponseRedirect(
            default_storage.url(name, parameters=parameters)  # type: ignore[call-arg]
        )
        patch_cache_control(
            response, private=True, max_age=max(0, settings.S3_PRESIGN_SECONDS // 2)
        )
        return response
    response = FileResponse(
        default_storage.open(name),
        content_type=content_type,
        as_attachment=download,
        filename=filename,
    )
    patch_cache_control(response, private=True, max_age=3600)
    return response


def _error(exc: attachments.UploadError) -> JsonResponse:
    return JsonResponse({"error": {"code": exc.code, "message": exc.message}}, status=exc.status)


@session_csrf_or_token_required
@require_POST
def upload(request: AuthenticatedHttpRequest) -> HttpResponse:
    """POST /attachments/ (multipart, field `file`): one image to attach to a message.

    201 with the attachment's id and app URL; a refusal is a JSON error with a
    protocol code (docs/protocol.md) and nothing stored.
    """
    declared = int(request.META.get("CONTENT_LENGTH") or 0)
    if declared > settings.UPLOAD_MAX_BYTES + 64 * 1024:
        # Refused before the body is read (and spooled to disk) at all.
        return _error(
            attachments.UploadError(
                "upload_too_large",
                f"Images may be at most {settings.UPLOAD_MAX_BYTES // 1024:,} KiB.",
                413,
            )
        )
    sent = request.FILES.get("file")
    if sent is None:
        return JsonResponse(
            {"error": {"code": "bad_frame", "message": "Send the image as the form field 'file'."}},
            status=400,
        )
    try:
        attachment = attachments.store(request.user, sent, sent.size)
    except attachments.UploadError as exc:
        return _error(exc)
    return JsonResponse(
        {
            "attachment": attachment.summary(),
            "images_left_today": ImageQuota.objects.remaining(request.user),
        },
        status=201,
    )


@session_or_token_required
@require_GET
def attachment(request: AuthenticatedHttpRequest, attachment_id: uuid.UUID) -> HttpResponseBase:
    """The app URL of an upload: its owner (and staff) only."""
    item = Attachment.objects.visible_to(request.user).filter(pk=attachment_id).first()
    if item is None:
        raise Http404("No such attachment.")
    filename = f"chatimg-upload-{str(item.pk)[:8]}.{item.format}"
    return serve_object(
        str(item.file.name),
        item.content_type,
        filename,
        download=request.GET.get("download") == "1",
    )


@session_or_token_required
@require_GET
def attachment_thumbnail(
    request: AuthenticatedHttpRequest, attachment_id: uuid.UUID
) -> HttpResponseBase:
    item = Attachment.objects.visible_to(request.user).filter(pk=attachment_id).first()
    if item is None:
        raise Http404("No such attachment.")
    key = thumbnails.ensure(item)
    return serve_object(key, "image/webp", f"chatimg-upload-{str(item.pk)[:8]}-small.webp")


@session_or_token_required
@require_GET
def image_thumbnail(request: AuthenticatedHttpRequest, image_id: uuid.UUID) -> HttpResponseBase:
    """A generated image's small WebP (the admin's list, the gallery)."""
    picture = (
        GeneratedImage.objects.visible_to(request.user)
        .filter(pk=image_id)
        .only("id", "file", "thumbnail")
        .first()
    )
    if picture is None:
        raise Http404("No such image.")
    key = thumbnails.ensure(picture)
    return serve_object(key, "image/webp", f"chatimg-{str(picture.pk)[:8]}-small.webp")


@login_required
@require_GET
def gallery(request: AuthenticatedHttpRequest) -> HttpResponse:
    """All my generated images, newest first, paged; ?conversation=<id> narrows it.

    Uploads are not listed: they are the user's own files, shown in their message.
    """
    images = (
        GeneratedImage.objects.filter(user=request.user)
        .exclude(review_status=GeneratedImage.Review.HIDDEN)
        .select_related("conversation")
        .only(
            "id",
            "prompt",
            "width",
            "height",
            "created_at",
            "conversation__id",
            "conversation__title",
        )
        .order_by("-created_at", "-id")
    )
    chosen = None
    raw = request.GET.get("conversation", "")
    if raw:
        try:
            chosen = Conversation.objects.owned(request.user, uuid.UUID(raw))
        except (ValueError, NotFound):
            # Someone else's or a malformed id: the same 404 as a missing page.
            return render(request, "404.html", status=404)
        images = images.filter(conversation=chosen)
    page = Paginator(images, GALLERY_PAGE_SIZE).get_page(request.GET.get("page"))
    with_images = GeneratedImage.objects.filter(user=request.user).values("conversation_id")
    filters = Conversation.objects.filter(user=request.user, pk__in=with_images)
    return render(
        request,
        "conversations/gallery.html",
        {
            "page": page,
            "chosen": chosen,
            "filters": filters.only("id", "title").order_by("-updated_at")[:100],
        },
    )
