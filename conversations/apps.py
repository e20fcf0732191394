"""The conversations app: its configuration, and the signal handlers it connects at start."""

from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Signal handlers that close sockets whose credentials ended.
        from conversations import access  # noqa: F401
