from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from conversations.models import ApiToken, Conversation, GeneratedImage, Message, ToolInvocation


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


class MessageInline(ReadOnlyInline):
    model = Message
    fields = ["role", "status", "text", "error_code", "created_at"]
    readonly_fields = fields


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "updated_at", "created_at"]
    list_select_related = ["user"]
    search_fields = ["title", "user__username"]
    readonly_fields = ["id", "user", "created_at", "updated_at"]
    inlines = [MessageInline]
    date_hierarchy = "updated_at"


class ToolInvocationInline(ReadOnlyInline):
    model = ToolInvocation
    fields = ["name", "status", "arguments", "result", "error", "text_offset", "created_at"]
    readonly_fields = fields


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "conversation", "role", "status", "created_at"]
    list_filter = ["role", "status"]
    list_select_related = ["conversation"]
    search_fields = ["text"]
    readonly_fields = [f.name for f in Message._meta.fields]
    inlines = [ToolInvocationInline]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(GeneratedImage)
class GeneratedImageAdmin(admin.ModelAdmin):
    list_display = ["thumbnail", "prompt_preview", "user", "model", "size", "created_at"]
    list_filter = ["model", "size", "created_at"]
    list_select_related = ["user"]
    search_fields = ["prompt", "revised_prompt"]
    readonly_fields = [
        "preview",
        "id",
        "user",
        "conversation",
        "tool_invocation",
        "file",
        "sha256",
        "bytes",
        "width",
        "height",
        "format",
        "model",
        "size",
        "quality",
        "prompt",
        "revised_prompt",
        "latency_ms",
        "created_at",
    ]
    exclude = []
    date_hierarchy = "created_at"
    show_full_result_count = False  # no COUNT(*) over thousands of rows per page view

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    @admin.display(description="Image")
    def thumbnail(self, obj: GeneratedImage) -> str:
        return format_html(
            '<img src="{}" alt="" width="96" height="96" loading="lazy" '
            'style="object-fit:cover;border-radius:4px">',
            obj.get_absolute_url(),
        )

    @admin.display(description="Image")
    def preview(self, obj: GeneratedImage) -> str:
        return format_html(
            '<a href="{0}"><img src="{0}" alt="" style="max-width:512px;height:auto"></a>',
            obj.get_absolute_url(),
        )

    @admin.display(description="Prompt", ordering="prompt")
    def prompt_preview(self, obj: GeneratedImage) -> str:
        return obj.prompt if len(obj.prompt) <= 100 else obj.prompt[:97] + "…"


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

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset) -> None:  # type: ignore[no-untyped-def]
        queryset.filter(revoked_at=None).update(revoked_at=timezone.now())
