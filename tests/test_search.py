"""Search: the owner's conversations by title and text, matches marked, nothing escaped wrongly."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client

from conversations import search
from conversations.models import Conversation, Message
from tests.chats import chat

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(make_user: Any) -> Any:
    return make_user("alice")


def found(user: Any, query: str) -> list[str]:
    return [hit.title for hit in search.search(user, query)]


def test_it_finds_a_conversation_by_a_word_of_its_text_and_marks_the_word(alice: Any) -> None:
    chat(alice, "Evening walk", "tell me about harbours", "The lighthouse keeper waved.")
    chat(alice, "Groceries", "eggs, milk", "Noted.")
    hits = search.search(alice, "lighthouse")
    assert [hit.title for hit in hits] == ["Evening walk"]
    assert "<mark>lighthouse</mark>" in hits[0].snippet_html


def test_it_finds_by_title_and_marks_the_title(alice: Any) -> None:
    chat(alice, "Lighthouses of Brittany", "hello", "hi")
    hits = search.search(alice, "brittany")
    assert [hit.title for hit in hits] == ["Lighthouses of Brittany"]
    assert hits[0].title_html == "Lighthouses of <mark>Brittany</mark>"


def test_every_word_must_match_each_as_a_prefix(alice: Any) -> None:
    chat(alice, "One", "a lighthouse at dusk", "ok")
    chat(alice, "Two", "a lighthouse at noon", "ok")
    assert found(alice, "lightho dus") == ["One"]
    assert found(alice, "LIGHTHOUSE") == ["Two", "One"]  # newest first, any case
    assert found(alice, "lighthouse midnight") == []


def test_a_one_letter_word_is_a_whole_word_not_a_prefix(alice: Any) -> None:
    chat(alice, "Vitamins", "vitamin c and zinc", "ok")
    chat(alice, "Cars", "a fast car", "ok")
    assert found(alice, "c zinc") == ["Vitamins"]


def test_another_users_conversations_never_appear(alice: Any, make_user: Any) -> None:
    bob = make_user("bob")
    chat(bob, "Bob's lighthouse", "lighthouse lighthouse", "lighthouse")
    chat(alice, "Mine", "no match here", "none")
    assert found(alice, "lighthouse") == []
    assert found(bob, "lighthouse") == ["Bob's lighthouse"]


def test_the_snippet_is_escaped_and_only_our_mark_is_markup(alice: Any) -> None:
    chat(alice, "<img src=x onerror=alert(1)>", "<script>alert(1)</script> lighthouse &amp;")
    hit = search.search(alice, "lighthouse")[0]
    assert hit.snippet_html == (
        "&lt;script&gt;alert(1)&lt;/script&gt; <mark>lighthouse</mark> &amp;amp;"
    )
    assert hit.title_html == "&lt;img src=x onerror=alert(1)&gt;"


def test_a_long_text_is_cut_around_the_first_match(alice: Any) -> None:
    text = "filler " * 100 + "the lighthouse stands " + "tail " * 100
    chat(alice, "Long", text)
    snippet = search.search(alice, "lighthouse")[0].snippet_html
    assert snippet.startswith("…") and snippet.endswith("…")
    assert "<mark>lighthouse</mark>" in snippet
    assert len(snippet) < search.SNIPPET_CHARS + 40


def test_the_index_follows_renames_edits_and_deletes(alice: Any) -> None:
    conversation = chat(alice, "Plain title", "first words")
    conversation.rename("Harbour notes")
    assert found(alice, "harbour") == ["Harbour notes"]
    assert found(alice, "plain") == []
    message = conversation.messages.get()
    # A checkpoint writes the text with a queryset update(), not save().
    Message.objects.filter(pk=message.pk).update(text="second draft about storms")
    assert found(alice, "storms") == ["Harbour notes"]
    assert found(alice, "first") == []
    conversation.delete()
    assert found(alice, "harbour") == []


def test_a_query_without_words_searches_nothing(alice: Any, django_assert_num_queries: Any) -> None:
    chat(alice, "Anything", "text")
    with django_assert_num_queries(0):
        assert search.search(alice, "  ?!  ") == []


@pytest.mark.parametrize("conversations", [1, 25])
def test_a_search_is_two_queries_however_many_results(
    alice: Any, conversations: int, django_assert_num_queries: Any
) -> None:
    for number in range(conversations):
        chat(alice, f"Chat {number}", "about the lighthouse", "the lighthouse again")
    search.search(alice, "warmup")  # SQLite: whether FTS5 is there is looked up once
    # PostgreSQL: conversations, snippets; SQLite: message matches, conversations, snippets.
    with django_assert_num_queries(2 if connection.vendor == "postgresql" else 3):
        hits = search.search(alice, "lighthouse")
    assert len(hits) == min(conversations, search.RESULTS)
    assert all("<mark>lighthouse</mark>" in hit.snippet_html for hit in hits)


def test_the_database_index_is_used_where_there_is_one() -> None:
    expected = {"postgresql": "PostgreSQL full-text search (GIN)", "sqlite": "SQLite FTS5"}
    assert search.backend_name() == expected[connection.vendor]


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's FTS5 triggers")
def test_sqlite_triggers_dropped_by_a_table_rebuild_are_remade_and_the_index_rebuilt(
    alice: Any,
) -> None:
    chat(alice, "Before", "words seen before")
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER conversations_message_fts_insert")
    chat(alice, "Plain", "unseen words")  # written while the trigger was gone
    assert found(alice, "unseen") == []
    assert search.ensure_sqlite_index()
    assert found(alice, "unseen") == ["Plain"]
    assert found(alice, "words") == ["Plain", "Before"]


def test_the_search_endpoint_answers_the_sidebar_with_its_html(alice: Any) -> None:
    chat(alice, "Evening walk", "The lighthouse keeper waved.")
    client = Client()
    client.force_login(alice)
    response = client.get("/search/", {"q": "lighthouse"}, headers={"accept": "application/json"})
    assert response.status_code == 200
    data = response.json()
    assert data["count"] == 1
    conversation = Conversation.objects.get()
    assert f'href="/c/{conversation.pk}/"' in data["html"]
    assert "<mark>lighthouse</mark>" in data["html"]
    page = client.get("/search/", {"q": "lighthouse"})
    assert page.status_code == 200 and b"<mark>lighthouse</mark>" in page.content


def test_the_search_endpoint_needs_a_login(client: Client) -> None:
    response = client.get("/search/", {"q": "x"})
    assert response.status_code == 302
