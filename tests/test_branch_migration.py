"""The branches migration: a conversation stored before it becomes one path.

The migration's data step runs on rows as they were before it (no parent),
against the real database. The schema itself is not migrated back and forth
here: doing that inside the test session broke the test database for the tests
after it (SQLite rebuilds the message table and drops the search triggers).
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps

from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def _linear_paths() -> Any:
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    # Found by its topic, not its number: migrations are renumbered at merge.
    (name,) = [
        key[1]
        for key in loader.disk_migrations
        if key[0] == "conversations" and key[1].endswith("_branches")
    ]
    return importlib.import_module(f"conversations.migrations.{name}").linear_paths


def test_existing_linear_conversations_become_one_active_path(make_user: Any) -> None:
    user = make_user("ada")
    ids = {}
    for title in ("one", "two"):
        conversation = Conversation.objects.create(user=user, title=title)
        q1 = Message.objects.create(conversation=conversation, role="user", text="q1")
        a1 = Message.objects.create(
            conversation=conversation, role="assistant", text="a1", reply_to=q1
        )
        q2 = Message.objects.create(conversation=conversation, role="user", text="q2")
        ids[title] = [q1.pk, a1.pk, q2.pk]
    # As stored before the migration: no parents.
    Message.objects.update(parent=None)

    _linear_paths()(apps, None)

    for title, (q1, a1, q2) in ids.items():
        rows = Message.objects.filter(pk__in=[q1, a1, q2]).order_by("id")
        assert [(m.pk, m.parent_id, m.active) for m in rows] == [
            (q1, None, True),
            (a1, q1, True),
            (q2, a1, True),
        ], title
