"""Search a person's conversations by title and message text.

The database does the matching, with an index, on both stacks:

- PostgreSQL: full-text search on expression GIN indexes over
  ``to_tsvector('simple', title)`` and ``to_tsvector('simple', text)``
  (migration 0004). The query uses the very same expression (``Vector``), so
  the planner can use the index; a stored column would cost a write on every
  checkpoint of a streaming answer for nothing the index does not give.
- SQLite: FTS5 tables kept in step with the rows by triggers
  (``ensure_sqlite_index``, run after every ``migrate``: SQLite rebuilds a
  table for many schema changes, and dropping the old table drops its
  triggers, so they are re-created and the index rebuilt when missing).
- Any other database, or an SQLite built without FTS5: ``icontains``, which
  works but scans.

Both indexes use the same rules, so the two stacks find the same things: the
"simple" configuration / the unicode61 tokenizer (no stemming, no stop
words: the app does not know its users' languages), every word of the query
must appear, each as a prefix (search as you type: "lightho" finds
"lighthouse"). Results are the newest conversations first.

The highlighted snippet is made here, in Python, the same way for both
stacks: the text is cut into plain and matching pieces, every piece is
HTML-escaped, and only our own ``<mark>`` wraps the matches. Nothing the
user or the model wrote ever reaches the page as markup.
"""

from __future__ import annotations

import html
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.decorators import login_required
from django.contrib.postgres.search import SearchQuery, SearchVectorField
from django.db import connection, connections
from django.db.models import F, Func, Q, QuerySet, Window
from django.db.models.expressions import RawSQL
from django.db.models.functions import RowNumber
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET

from conversations.auth import AuthenticatedHttpRequest
from conversations.models import Conversation, Message

log = logging.getLogger(__name__)

#: Results per search: a sidebar's worth.
RESULTS = 20
#: Words of a query that count (a pasted paragraph is not a search).
MAX_TERMS = 8
#: Characters of text around the first match in a snippet.
SNIPPET_CHARS = 160

#: A word as both indexes see it: letters and digits (the underscore and all
#: punctuation separate words in PostgreSQL's parser and in FTS5's unicode61).
WORD = re.compile(r"[^\W_]+")

MESSAGE_FTS = "conversations_message_fts"
TITLE_FTS = "conversations_title_fts"


class Vector(Func):
    """``to_tsvector('simple', column)``: exactly the expression the GIN indexes are on."""

    template = "to_tsvector('simple'::regconfig, %(expressions)s)"
    output_field = SearchVectorField()


@dataclass(frozen=True)
class Hit:
    """One conversation found: its title and a snippet, matches marked."""

    conversation_id: uuid.UUID
    title: str
    title_html: SafeString
    snippet_html: SafeString
    updated_at: datetime

    @property
    def url(self) -> str:
        return reverse("conversation", args=[self.conversation_id])


def terms(query: str) -> list[str]:
    """The words of a query, lower-cased, at most MAX_TERMS, duplicates dropped."""
    seen: dict[str, None] = {}
    for word in WORD.findall(query.casefold()):
        seen.setdefault(word, None)
    return list(seen)[:MAX_TERMS]


def search(user: Any, query: str, limit: int = RESULTS) -> list[Hit]:
    """The user's conversations matching every word of `query`, newest first.

    Two queries whatever the number of results: the conversations, then the
    newest matching message of each (for its snippet). Another user's
    conversations are never candidates: the filter on the owner is part of
    the first query.
    """
    words = terms(query)
    if not words:
        return []
    matcher = _matcher(words)
    found = list(
        Conversation.objects.filter(user=user)
        .filter(Q(pk__in=matcher.titles()) | Q(pk__in=matcher.messages().values("conversation")))
        .order_by("-updated_at", "-id")
        .values_list("id", "title", "updated_at")[:limit]
    )
    if not found:
        return []
    snippets = dict(
        matcher.messages()
        .filter(conversation__in=[pk for pk, _, _ in found])
        .annotate(
            newest=Window(RowNumber(), partition_by=[F("conversation")], order_by=F("id").desc())
        )
        .filter(newest=1)
        .values_list("conversation", "text")
    )
    return [
        Hit(
            conversation_id=pk,
            title=title,
            title_html=highlight(title, words, whole=True),
            snippet_html=highlight(snippets.get(pk, ""), words),
            updated_at=updated_at,
        )
        for pk, title, updated_at in found
    ]


class _Matcher:
    """Which conversations' titles and which messages match, as subqueries."""

    def __init__(self, words: list[str]) -> None:
        self.words = words

    def titles(self) -> QuerySet[Conversation, Any]:
        query = Q()
        for word in self.words:
            query &= Q(title__icontains=word)
        return Conversation.objects.filter(query).values("pk")

    def messages(self) -> QuerySet[Message]:
        query = Q()
        for word in self.words:
            query &= Q(text__icontains=word)
        return Message.objects.filter(query)


class _PostgresMatcher(_Matcher):
    def _query(self) -> SearchQuery:
        # Each word is letters and digits only (WORD), so it is a valid tsquery
        # lexeme as it is; ":*" makes it a prefix.
        return SearchQuery(
            " & ".join(f"{word}:*" for word in self.words), search_type="raw", config="simple"
        )

    def titles(self) -> QuerySet[Conversation, Any]:
        return (
            Conversation.objects.annotate(found=Vector("title"))
            .filter(found=self._query())
            .values("pk")
        )

    def messages(self) -> QuerySet[Message]:
        return Message.objects.annotate(found=Vector("text")).filter(found=self._query())


class _SqliteMatcher(_Matcher):
    def _query(self) -> str:
        # FTS5's query syntax: a quoted string is a phrase of one word here
        # (WORD has no quotes), "*" after it a prefix; terms are ANDed.
        return " AND ".join(f'"{word}"*' for word in self.words)

    def titles(self) -> QuerySet[Conversation, Any]:
        return Conversation.objects.filter(
            # The query goes in as a parameter; the SQL is constant.
            pk__in=RawSQL(
                "SELECT conversation_id FROM conversations_title_fts"
                " WHERE conversations_title_fts MATCH %s",
                [self._query()],
            )
        ).values("pk")

    def messages(self) -> QuerySet[Message]:
        return Message.objects.filter(
            pk__in=RawSQL(
                "SELECT rowid FROM conversations_message_fts"
                " WHERE conversations_message_fts MATCH %s",
                [self._query()],
            )
        )


def _matcher(words: list[str]) -> _Matcher:
    if connection.vendor == "postgresql":
        return _PostgresMatcher(words)
    if connection.vendor == "sqlite" and sqlite_index_ready():
        return _SqliteMatcher(words)
    return _Matcher(words)


def backend_name() -> str:
    """What this database searches with (for docs, the bench and the admin)."""
    return {
        _PostgresMatcher: "PostgreSQL full-text search (GIN)",
        _SqliteMatcher: "SQLite FTS5",
        _Matcher: "icontains (no index)",
    }[type(_matcher(["x"]))]


# --- snippets ---------------------------------------------------------------------------


def highlight(text: str, words: list[str], *, whole: bool = False) -> SafeString:
    """`text` (or, unless `whole`, a window of it around the first match), HTML-escaped,
    with each word that starts with one of `words` wrapped in <mark>.

    Built from escaped pieces, so nothing in `text` can become markup.
    """
    text = " ".join(text.split())
    if not text or not words:
        return mark_safe("")
    pattern = re.compile(
        r"(?<![^\W_])(?:" + "|".join(re.escape(w) for w in words) + r")[^\W_]*", re.IGNORECASE
    )
    if not whole:
        text = _window(text, pattern)
    pieces: list[str] = []
    start = 0
    for match in pattern.finditer(text):
        pieces.append(html.escape(text[start : match.start()]))
        pieces.append(f"<mark>{html.escape(match.group())}</mark>")
        start = match.end()
    pieces.append(html.escape(text[start:]))
    return mark_safe("".join(pieces))  # noqa: S308 (every piece escaped above)


def _window(text: str, pattern: re.Pattern[str]) -> str:
    if len(text) <= SNIPPET_CHARS:
        return text
    match = pattern.search(text)
    first = match.start() if match else 0
    start = max(0, first - SNIPPET_CHARS // 4)
    if start:
        # Start at a word boundary, not in the middle of one.
        space = text.find(" ", start, first)
        start = space + 1 if space != -1 else start
    end = min(len(text), start + SNIPPET_CHARS)
    if end < len(text):
        space = text.rfind(" ", max(first, start + 1), end)
        end = space if space > first else end
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


# --- the SQLite index ------------------------------------------------------------------

#: FTS5 tables and the triggers that keep them in step with the rows. Messages
#: use an external-content table (the text is stored once, in the message
#: row); titles a small table of their own, because a conversation's key is a
#: UUID and an external-content table needs an integer rowid.
_SQLITE_TABLES = [
    """CREATE VIRTUAL TABLE IF NOT EXISTS conversations_message_fts USING fts5(
        text, content='conversations_message', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2')""",
    """CREATE VIRTUAL TABLE IF NOT EXISTS conversations_title_fts USING fts5(
        title, conversation_id UNINDEXED, tokenize='unicode61 remove_diacritics 2')""",
]
_SQLITE_TRIGGERS = {
    "conversations_message_fts_insert": """AFTER INSERT ON conversations_message BEGIN
        INSERT INTO conversations_message_fts(rowid, text) VALUES (new.id, new.text);
    END""",
    "conversations_message_fts_delete": """AFTER DELETE ON conversations_message BEGIN
        INSERT INTO conversations_message_fts(conversations_message_fts, rowid, text)
            VALUES ('delete', old.id, old.text);
    END""",
    "conversations_message_fts_update": """AFTER UPDATE OF text ON conversations_message BEGIN
        INSERT INTO conversations_message_fts(conversations_message_fts, rowid, text)
            VALUES ('delete', old.id, old.text);
        INSERT INTO conversations_message_fts(rowid, text) VALUES (new.id, new.text);
    END""",
    "conversations_title_fts_insert": """AFTER INSERT ON conversations_conversation BEGIN
        INSERT INTO conversations_title_fts(title, conversation_id) VALUES (new.title, new.id);
    END""",
    "conversations_title_fts_delete": """AFTER DELETE ON conversations_conversation BEGIN
        DELETE FROM conversations_title_fts WHERE conversation_id = old.id;
    END""",
    "conversations_title_fts_update": """AFTER UPDATE OF title ON conversations_conversation BEGIN
        DELETE FROM conversations_title_fts WHERE conversation_id = old.id;
        INSERT INTO conversations_title_fts(title, conversation_id) VALUES (new.title, new.id);
    END""",
}

_ready: dict[str, bool] = {}


def ensure_sqlite_index(using: str = "default") -> bool:
    """Create the FTS5 tables and triggers when missing; rebuild the index if
    any trigger was missing (rows may have changed unseen). Returns whether
    FTS5 search is in place. Idempotent; run after every migrate.
    """
    db = connections[using]
    if db.vendor != "sqlite":
        return False
    _ready.pop(using, None)
    with db.cursor() as cursor:
        try:
            for statement in _SQLITE_TABLES:
                cursor.execute(statement)
        except Exception as exc:  # an SQLite built without FTS5
            log.warning("SQLite has no FTS5 (%s): search falls back to icontains", exc)
            return False
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        present = {name for (name,) in cursor.fetchall()}
        missing = [name for name in _SQLITE_TRIGGERS if name not in present]
        for name in missing:
            cursor.execute(f"CREATE TRIGGER {name} {_SQLITE_TRIGGERS[name]}")
        if missing:
            cursor.execute(
                "INSERT INTO conversations_message_fts(conversations_message_fts) VALUES (%s)",
                ["rebuild"],
            )
            cursor.execute("DELETE FROM conversations_title_fts")
            cursor.execute(
                "INSERT INTO conversations_title_fts(title, conversation_id) "
                "SELECT title, id FROM conversations_conversation"
            )
    return True


def sqlite_index_ready(using: str = "default") -> bool:
    """Whether the FTS5 tables exist on this database (looked up once per process)."""
    if using not in _ready:
        with connections[using].cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM sqlite_master WHERE name IN (%s, %s)",
                [MESSAGE_FTS, TITLE_FTS],
            )
            _ready[using] = cursor.fetchone()[0] == 2
    return _ready[using]


# --- the view ---------------------------------------------------------------------------


@login_required
@require_GET
def search_view(request: AuthenticatedHttpRequest) -> HttpResponse:
    """GET /search/?q=…: the sidebar's results (JSON with their HTML), or a page without JS."""
    query = request.GET.get("q", "")[:200]
    hits = search(request.user, query)
    context = {"hits": hits, "query": query, "searched": bool(terms(query))}
    if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
        html_ = render_to_string("conversations/_search_results.html", context, request)
        return JsonResponse({"query": query, "count": len(hits), "html": html_})
    return render(request, "conversations/search.html", context)
