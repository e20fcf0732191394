"""The branches migration: a conversation stored before it becomes one path."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)


def _branches_migration(executor: MigrationExecutor) -> tuple[str, str]:
    # Found by its topic, not its number: migrations are renumbered at merge.
    names = [key for key in executor.loader.disk_migrations if key[0] == "conversations"]
    return next(key for key in names if key[1].endswith("_branches"))


def test_existing_linear_conversations_become_one_active_path(make_user: Any) -> None:
    executor = MigrationExecutor(connection)
    target = _branches_migration(executor)
    before = executor.loader.graph.node_map[target].parents
    previous = next(parent.key for parent in before if parent.key[0] == "conversations")
    latest = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate([previous])
        old = executor.loader.project_state([previous]).apps
        user = make_user("ada")
        Conversation = old.get_model("conversations", "Conversation")
        Message = old.get_model("conversations", "Message")
        ids = {}
        for name in ("one", "two"):
            conversation = Conversation.objects.create(user_id=user.pk, title=name)
            q1 = Message.objects.create(conversation=conversation, role="user", text="q1")
            a1 = Message.objects.create(
                conversation=conversation, role="assistant", text="a1", reply_to=q1
            )
            q2 = Message.objects.create(conversation=conversation, role="user", text="q2")
            ids[name] = [q1.pk, a1.pk, q2.pk]

        executor = MigrationExecutor(connection)
        executor.migrate([target])
        new = executor.loader.project_state([target]).apps
        Migrated = new.get_model("conversations", "Message")
        for name, (q1, a1, q2) in ids.items():
            rows = Migrated.objects.filter(pk__in=[q1, a1, q2]).order_by("id")
            assert [(m.pk, m.parent_id, m.active) for m in rows] == [
                (q1, None, True),
                (a1, q1, True),
                (q2, a1, True),
            ], name
    finally:
        MigrationExecutor(connection).migrate(latest)
