"""Full-text search indexes (conversations/search.py).

PostgreSQL: expression GIN indexes over exactly the expressions the search
query uses. SQLite: nothing here; its FTS5 tables and triggers are (re)made
after every migrate (search.ensure_sqlite_index, connected in apps.py),
because SQLite's table rebuilds for later schema changes drop triggers.
Neither changes the model state, so makemigrations has nothing to say.
"""

from django.db import migrations

INDEXES = [
    ("conversations_message_text_search", "conversations_message", "text"),
    ("conversations_conversation_title_search", "conversations_conversation", "title"),
]


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, table, column in INDEXES:
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} "
            f"USING gin (to_tsvector('simple'::regconfig, {column}))"
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, _, _ in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("conversations", "0006_message_owner")]

    operations = [migrations.RunPython(create, drop, elidable=False)]
