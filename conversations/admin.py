"""The staff's review of generations in the Django admin: images, conversations, tokens."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from django.contrib import admin
from django.contrib.auth.models import User
from django.db.models import Model, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from conversations.models import (
    ApiToken,
    Attachment,
    Conversation,
    GeneratedImage,
    Message,
    Share,
    ToolInvocation,
)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


def _thumbnail(url: str, alt: str, size: int = 96) -> str:
    """A small stored WebP (conversations/thumbnails.py), never the full PNG scaled down."""
    return format_html(
        '<img src="{}" alt="{}" width="{}" height="{}" loading="lazy" '
        'style="object-fit:cover;border-radius:4px">',
        url,
        alt,
        size,
        size,
    )


class AttachmentInline(ReadOnlyInline):
    model = Attachment
    fields = ["picture", "owner", "message", "width", "height", "bytes", "created_at"]
    readonly_fields = ["picture", "owner", "message", "width", "height", "bytes", "created_at"]

    @admin.display(description="Image")
    def picture(self, obj: Attachment) -> str:
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">{}</a>',
            obj.get_absolute_url(),
            _thumbnail(reverse("attachment_thumbnail", args=[obj.pk]), "Attached image", 64),
        )


class MessageAttachmentInline(AttachmentInline):
    fields = ["picture", "width", "height", "bytes", "sha256", "created_at"]
    readonly_fields = ["picture", "width", "height", "bytes", "sha256", "created_at"]


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "updated_at", "created_at"]
    list_select_related = ["user"]
    search_fields = ["title", "user__username"]
    fields = ["id", "user", "title", "created_at", "updated_at", "transcript"]
    readonly_fields = ["id", "user", "created_at", "updated_at", "transcript"]
    date_hierarchy = "updated_at"
    show_full_result_count = False
    inlines = [AttachmentInline]

    class Media:
        # The transcript reuses the page's image cards: this makes their Enlarge
        # buttons open the picture (chat.js, with its lightbox, is not loaded here).
        js = ["conversations/admin_transcript.js"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A conversation is what someone said in the chat; staff do not make them up.
        return False

    @admin.display(description="Conversation")
    def transcript(self, obj: Conversation) -> str:
        """The conversation as it reads in the chat: text, tool calls, images."""
        messages = obj.messages.prefetch_related("tool_invocations__images__parents", "attachments")
        return render_to_string("admin/conversations/transcript.html", {"messages": messages})


class ToolInvocationInline(ReadOnlyInline):
    model = ToolInvocation
    fields = ["name", "status", "arguments", "result", "error", "text_offset", "created_at"]
    readonly_fields = [f for f in fields if isinstance(f, str)]  # all: they are plain names


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "conversation", "role", "status", "created_at"]
    list_filter = ["role", "status"]
    list_select_related = ["conversation"]
    search_fields = ["text"]
    readonly_fields = [f.name for f in Message._meta.fields]
    inlines = [ToolInvocationInline, MessageAttachmentInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class ReviewFilter(admin.SimpleListFilter):
    title = "review"
    parameter_name = "review"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> Iterable[tuple[str, str]]:
        return GeneratedImage.Review.choices

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[GeneratedImage]
    ) -> QuerySet[GeneratedImage]:
        return queryset.filter(review_status=self.value()) if self.value() else queryset


@admin.register(GeneratedImage)
class GeneratedImageAdmin(admin.ModelAdmin):
    """The moderators' review list: fast with thousands of rows (no N+1, one COUNT)."""

    list_display = [
        "picture",
        "prompts",
        "user",
        "conversation_link",
        "model",
        "size",
        "review_status",
        "created_at",
    ]
    list_display_links = ["picture"]
    list_filter = [ReviewFilter, "model", ("user", admin.RelatedOnlyFieldListFilter), "created_at"]
    list_select_related = ["user", "conversation"]
    list_per_page = 50
    search_fields = ["prompt", "revised_prompt"]
    ordering = ["-created_at"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # the paginator's COUNT is the only one
    actions = ["mark_visible", "mark_flagged", "mark_hidden"]
    fields = [
        "preview",
        "lineage",
        "review_status",
        "reviewed_by",
        "reviewed_at",
        "prompt",
        "revised_prompt",
        "user",
        "conversation",
        "model",
        "size",
        "quality",
        "style",
        "width",
        "height",
        "format",
        "bytes",
        "sha256",
        "file_link",
        "latency_ms",
        "cost_usd",
        "created_at",
    ]
    readonly_fields = [f for f in fields if isinstance(f, str) and f != "review_status"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(
        self,
        request: HttpRequest,
        obj: GeneratedImage,
        form: ModelForm[GeneratedImage],
        change: bool,
    ) -> None:
        if "review_status" in form.changed_data:
            # The admin lets only staff accounts in: never AnonymousUser here.
            obj.reviewed_by, obj.reviewed_at = cast(User, request.user), timezone.now()
        super().save_model(request, obj, form, change)

    def _review(
        self, request: HttpRequest, queryset: QuerySet[GeneratedImage], status: str
    ) -> None:
        count = queryset.update(
            review_status=status, reviewed_by=request.user, reviewed_at=timezone.now()
        )
        self.message_user(request, f"{count} image(s) marked {status}.")

    @admin.action(description="Mark selected images visible")
    def mark_visible(self, request: HttpRequest, queryset: QuerySet[GeneratedImage]) -> None:
        self._review(request, queryset, GeneratedImage.Review.VISIBLE)

    @admin.action(description="Flag selected images for a second look")
    def mark_flagged(self, request: HttpRequest, queryset: QuerySet[GeneratedImage]) -> None:
        self._review(request, queryset, GeneratedImage.Review.FLAGGED)

    @admin.action(description="Hide selected images from their owners")
    def mark_hidden(self, request: HttpRequest, queryset: QuerySet[GeneratedImage]) -> None:
        self._review(request, queryset, GeneratedImage.Review.HIDDEN)

    @admin.display(description="Image")
    def picture(self, obj: GeneratedImage) -> str:
        return _thumbnail(reverse("image_thumbnail", args=[obj.pk]), obj.prompt[:100])

    @admin.display(description="File")
    def file_link(self, obj: GeneratedImage) -> str:
        """The object key, linked through the app's image URL (a storage URL would 404:
        local media is never served, and a bucket is private)."""
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">{}</a> · '
            '<a href="{}?download=1">download</a>',
            obj.get_absolute_url(),
            obj.file.name,
            obj.get_absolute_url(),
        )

    @admin.display(description="Image")
    def preview(self, obj: GeneratedImage) -> str:
        return format_html(
            '<a href="{0}"><img src="{0}" alt="" style="max-width:512px;height:auto"></a>',
            obj.get_absolute_url(),
        )

    @admin.display(description="Prompt / revised prompt", ordering="prompt")
    def prompts(self, obj: GeneratedImage) -> str:
        revised = obj.revised_prompt[:200] if obj.revised_prompt else "—"
        return format_html(
            "{}<br><small style='color:var(--body-quiet-color)'>{}</small>",
            obj.prompt[:200],
            revised,
        )

    @admin.display(description="Conversation")
    def conversation_link(self, obj: GeneratedImage) -> str:
        url = reverse("admin:conversations_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">{}</a>', url, obj.conversation)

    @admin.display(description="Lineage")
    def lineage(self, obj: GeneratedImage) -> str:
        """The images this one was edited from, and the edits made from it, each linked."""

        def links(images: QuerySet[GeneratedImage]) -> str:
            rows = [
                (
                    reverse("admin:conversations_generatedimage_change", args=[image.pk]),
                    image.prompt[:80],
                    image.created_at.strftime("%Y-%m-%d %H:%M"),
                )
                for image in images.order_by("created_at")
            ]
            if not rows:
                return "—"
            return format_html_join(", ", '<a href="{}">{}</a> <small>({})</small>', rows)

        return format_html(
            "Edited from: {}<br>Edits of it: {}",
            links(obj.parents.all()),
            links(obj.children.all()),
        )


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "hint", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    list_select_related = ["user"]
    search_fields = ["name", "user__username", "hint"]
    # The digest is useless to a person and there is no raw token to show.
    fields = ["name", "user", "hint", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["user", "hint", "created_at", "last_used_at"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        queryset.filter(revoked_at=None).update(revoked_at=timezone.now())


@admin.register(Attachment)
class AttachmentAdmin(admin.ModelAdmin):
    """Images people uploaded with their messages (read-only: they are the users' own)."""

    list_display = ["picture", "owner", "conversation", "width", "height", "bytes", "created_at"]
    list_display_links = ["picture"]
    list_select_related = ["owner", "conversation"]
    list_filter = [("message", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["owner__username", "sha256"]
    ordering = ["-created_at"]
    show_full_result_count = False
    fields = [
        "preview",
        "owner",
        "conversation",
        "message",
        "format",
        "width",
        "height",
        "bytes",
        "sha256",
        "key",
        "created_at",
        "attached_at",
    ]
    readonly_fields = [f for f in fields if isinstance(f, str)]  # all: plain names

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    @admin.display(description="Image")
    def picture(self, obj: Attachment) -> str:
        return _thumbnail(reverse("attachment_thumbnail", args=[obj.pk]), "Attached image")

    @admin.display(description="Image")
    def preview(self, obj: Attachment) -> str:
        return format_html(
            '<a href="{0}" target="_blank" rel="noopener"><img src="{0}" alt="" '
            'style="max-width:512px;height:auto"></a>',
            obj.get_absolute_url(),
        )

    @admin.display(description="Storage key")
    def key(self, obj: Attachment) -> str:
        return str(obj.file.name)


@admin.register(Share)
class ShareAdmin(admin.ModelAdmin):
    """Every read-only link: whose, to what, until when; staff can end one."""

    list_display = ["conversation", "owner", "created_at", "expires_at", "revoked_at", "live"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "created_at"]
    list_select_related = ["owner", "conversation"]
    search_fields = ["conversation__title", "owner__username"]
    # The key alone opens nothing (the link is key + HMAC): not shown, not editable.
    fields = ["conversation", "owner", "created_at", "expires_at", "revoked_at"]
    readonly_fields = ["conversation", "owner", "created_at"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(boolean=True, description="Opens")
    def live(self, obj: Share) -> bool:
        return obj.is_live

    @admin.action(description="Revoke the selected links")
    def revoke(self, request: HttpRequest, queryset: QuerySet[Share]) -> None:
        queryset.filter(revoked_at=None).update(revoked_at=timezone.now())
