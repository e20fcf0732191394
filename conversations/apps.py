"""The conversations app: its configuration, and the signal handlers it connects at start."""

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _search_index(sender: AppConfig, using: str = "default", **kwargs: Any) -> None:
    # SQLite's FTS5 tables and triggers (conversations/search.py): after every
    # migrate, since a table rebuild by a later migration drops the triggers.
    from conversations.search import ensure_sqlite_index

    ensure_sqlite_index(using)


class ConversationsConfig(AppConfig):
    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Signal handlers that close sockets whose credentials ended.
        from conversations import access  # noqa: F401

        post_migrate.connect(_search_index, sender=self, dispatch_uid="conversations.search")
