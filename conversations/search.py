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

    A fixed number of queries whatever the number of results (two on
    PostgreSQL, three on SQLite). Another user's conversations are never
    candidates: the owner is part of every matching query.
    """
    words = terms(query)
    if not words:
        return []
    found, snippets = _matcher(words).find(user, limit)
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


Found = list[tuple[uuid.UUID, str, datetime]]


class _Matcher:
    """Which titles and messages match; the plain version scans (icontains)."""

    def __init__(self, words: list[str]) -> None:
        self.words = words

    def _title_like(self) -> Q:
        query = Q()
        for word in self.words:
            query &= Q(title__icontains=word)
        return query

    def titles(self) -> QuerySet[Conversation, Any]:
        return Conversation.objects.filter(self._title_like()).values("pk")

    def messages(self) -> QuerySet[Message]:
        query = Q()
        for word in self.words:
            query &= Q(text__icontains=word)
        return Message.objects.filter(query)

    def find(self, user: Any, limit: int) -> tuple[Found, dict[uuid.UUID, str]]:
        """The conversations (id, title, updated_at), and the text of the newest
        matching message of each: two queries, the database's planner choosing
        how (PostgreSQL walks the recent conversations for a common word, and
        goes through the GIN index for a rare one)."""
        found = list(
            Conversation.objects.filter(user=user)
            .filter(Q(pk__in=self.titles()) | Q(pk__in=self.messages().values("conversation")))
            .order_by("-updated_at", "-id")
            .values_list("id", "title", "updated_at")[:limit]
        )
        if not found:
            return [], {}
        snippets = dict(
            self.messages()
            .filter(conversation__in=[pk for pk, _, _ in found])
            .annotate(
                newest=Window(
                    RowNumber(), partition_by=[F("conversation")], order_by=F("id").desc()
                )
            )
            .filter(newest=1)
            .values_list("conversation", "text")
        )
        return found, snippets


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


#: Matching messages read per step on SQLite, and the most steps (a bound on
#: a pathological history: one conversation with thousands of matches).
SQLITE_BATCH = 200
SQLITE_MAX_BATCHES = 25


class _SqliteMatcher(_Matcher):
    """FTS5, the owner inside the index, newest message first.

    The message index's rowid is minus the message id, so FTS5's cheap
    ascending walk is newest first; the owner is a column of the index, so
    FTS5 intersects "this owner" with the words itself and stops after a
    batch. (An FTS query joined to the owner afterwards reads every match of
    every user: seconds for a common word on 20,000 conversations.)
    """

    def _match(self, user: Any) -> str:
        # FTS5's query syntax: a quoted string is one word here (WORD has no
        # quotes); "*" makes it a prefix, from two letters on (a one-letter
        # prefix matches nearly everything and is not what anyone means).
        words = " AND ".join(f'"{w}"' + ("*" if len(w) > 1 else "") for w in self.words)
        return f"owner : u{int(user.pk)} AND text : ({words})"

    def find(self, user: Any, limit: int) -> tuple[Found, dict[uuid.UUID, str]]:
        newest: dict[uuid.UUID, int] = {}  # conversation -> its newest matching message
        with connection.cursor() as cursor:
            after = -(2**63)
            for _ in range(SQLITE_MAX_BATCHES):
                cursor.execute(
                    "SELECT m.id, m.conversation_id FROM conversations_message_fts f"
                    " JOIN conversations_message m ON m.id = -f.rowid"
                    " WHERE conversations_message_fts MATCH %s AND f.rowid > %s"
                    " ORDER BY f.rowid LIMIT %s",
                    [self._match(user), after, SQLITE_BATCH],
                )
                rows = cursor.fetchall()
                for message_id, conversation_id in rows:
                    newest.setdefault(uuid.UUID(conversation_id), message_id)
                if len(rows) < SQLITE_BATCH or len(newest) >= limit:
                    break
                after = -rows[-1][0]
        # Titles: LIKE over the owner's own conversations (short strings, one
        # person's rows through the (user, updated_at) index: a few ms for
        # 10,000); a title table in FTS5 would need an integer key to delete by.
        found = list(
            Conversation.objects.filter(user=user)
            .filter(Q(pk__in=newest) | self._title_like())
            .order_by("-updated_at", "-id")
            .values_list("id", "title", "updated_at")[:limit]
        )
        wanted = [newest[pk] for pk, _, _ in found if pk in newest]
        texts = dict(Message.objects.filter(pk__in=wanted).values_list("conversation", "text"))
        return found, texts


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

#: The FTS5 table and the triggers that keep it in step with the messages.
#: Contentless (the text is stored once, in the message row), its rowid minus
#: the message id (newest first), the owner a column ("u<user id>") so that
#: FTS5 itself keeps to one person's messages. A message's conversation (and
#: so its owner) never changes, which a contentless table's "delete" relies on.
_SQLITE_TABLE = """CREATE VIRTUAL TABLE conversations_message_fts USING fts5(
    owner, text, content='', prefix='2 3', tokenize='unicode61 remove_diacritics 2')"""
_SQLITE_TRIGGERS = {
    "conversations_message_fts_insert": """AFTER INSERT ON conversations_message BEGIN
        INSERT INTO conversations_message_fts(rowid, owner, text)
            VALUES (-new.id, (SELECT 'u' || user_id FROM conversations_conversation
                                       WHERE id = new.conversation_id), new.text);
    END""",
    "conversations_message_fts_delete": """AFTER DELETE ON conversations_message BEGIN
        INSERT INTO conversations_message_fts(conversations_message_fts, rowid, owner, text)
            VALUES ('delete', -old.id, (SELECT 'u' || user_id FROM conversations_conversation
                                       WHERE id = old.conversation_id), old.text);
    END""",
    "conversations_message_fts_update": """AFTER UPDATE OF text ON conversations_message BEGIN
        INSERT INTO conversations_message_fts(conversations_message_fts, rowid, owner, text)
            VALUES ('delete', -old.id, (SELECT 'u' || user_id FROM conversations_conversation
                                       WHERE id = old.conversation_id), old.text);
        INSERT INTO conversations_message_fts(rowid, owner, text)
            VALUES (-new.id, (SELECT 'u' || user_id FROM conversations_conversation
                                       WHERE id = new.conversation_id), new.text);
    END""",
}

_ready: dict[str, bool] = {}


def ensure_sqlite_index(using: str = "default") -> bool:
    """Create the FTS5 table and triggers when missing; rebuild the index if
    any trigger was missing (rows may have changed unseen). Returns whether
    FTS5 search is in place. Idempotent; run after every migrate.
    """
    db = connections[using]
    if db.vendor != "sqlite":
        return False
    _ready.pop(using, None)
    with db.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        present = {name for (name,) in cursor.fetchall()}
        cursor.execute("SELECT count(*) FROM sqlite_master WHERE name = %s", [MESSAGE_FTS])
        if not cursor.fetchone()[0]:
            try:
                cursor.execute(_SQLITE_TABLE)
            except Exception as exc:  # an SQLite built without FTS5
                log.warning("SQLite has no FTS5 (%s): search falls back to icontains", exc)
                return False
            present = set()
        missing = [name for name in _SQLITE_TRIGGERS if name not in present]
        for name in missing:
            cursor.execute(f"CREATE TRIGGER {name} {_SQLITE_TRIGGERS[name]}")
        if missing:
            cursor.execute(
                "INSERT INTO conversations_message_fts(conversations_message_fts) VALUES (%s)",
                ["delete-all"],
            )
            cursor.execute(
                "INSERT INTO conversations_message_fts(rowid, owner, text)"
                " SELECT -m.id, 'u' || c.user_id, m.text FROM conversations_message m"
                " JOIN conversations_conversation c ON c.id = m.conversation_id"
            )
    return True


def sqlite_index_ready(using: str = "default") -> bool:
    """Whether the FTS5 table exists on this database (looked up once per process)."""
    if using not in _ready:
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM sqlite_master WHERE name = %s", [MESSAGE_FTS])
            _ready[using] = cursor.fetchone()[0] == 1
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
