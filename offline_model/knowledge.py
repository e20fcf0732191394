"""A small canned knowledge set, so that the offline model answers the demo's own questions.

Deterministic: a question is matched by its topic words, the best match wins;
nothing matched is answered by the planner's fallback. Enough for the chips on
the empty chat page ("Explain websockets in one paragraph") and a few
neighbouring questions a person trying the demo asks next.
"""

from __future__ import annotations

import re

# (topic words, any of which must appear; the answer in Markdown)
TOPICS: tuple[tuple[frozenset[str], str], ...] = (
    (
        frozenset({"websocket", "websockets", "ws"}),
        "A **WebSocket** is a long-lived, two-way connection between a browser and a "
        "server. It starts as an ordinary HTTP request that asks to *upgrade*; once the "
        "server agrees, the same TCP connection carries small messages (frames) in both "
        "directions, at any time, without a new request each time. That makes it the "
        "natural fit for chat, live dashboards and games: the server can push an update "
        "the moment it happens instead of waiting to be polled, and each message costs a "
        "few bytes of framing rather than a full set of HTTP headers. This chat streams "
        "every answer to you over one.",
    ),
    (
        frozenset({"django"}),
        "**Django** is a Python web framework with the batteries included: an ORM and "
        "migrations for the database, URL routing, templates, forms, authentication and "
        "an automatic admin. Its rule is *fat models, thin views*: the logic lives with "
        "the data. This app is built on it, with **Channels** adding websockets.",
    ),
    (
        frozenset({"channels", "asgi", "daphne"}),
        "**Django Channels** extends Django beyond request and response: it runs on "
        "**ASGI** (served here by **daphne**), adds *consumers* for websockets, and a "
        "*channel layer* (Redis in production) so that any process can send to a group "
        "of sockets, which is how every tab following a chat sees the same answer.",
    ),
    (
        frozenset({"s3", "storage", "bucket"}),
        "Images here live in **S3-compatible object storage** through django-storages; "
        "the database keeps only each object's key. The page links to the app's own "
        "image URL, which checks who you are and then redirects to a short-lived signed "
        "URL, so the bucket itself stays private.",
    ),
    (
        frozenset({"offline", "model", "yourself", "who"}),
        "I'm the **built-in offline model**: a small OpenAI-compatible server inside "
        "chatimg, so that it works with no API key and no network. I know a few topics, "
        'I *draw* ("draw a lighthouse at dusk"), I *edit* what I drew ("make it night", '
        '"make it stormy"), and I can make several at once ("draw three pictures of a '
        'fox"). Set `OPENAI_API_KEY` to talk to a real model.',
    ),
    (
        frozenset({"hello", "hi", "hey", "thanks", "thank"}),
        'Hello! Ask me to *draw* something, then to change it ("make it night"), or ask '
        "about websockets, Django or how this app keeps its images.",
    ),
)

_WORD_RE = re.compile(r"[a-z0-9]+")


def answer(question: str) -> str | None:
    """The canned answer whose topic words the question shares most, or None."""
    words = set(_WORD_RE.findall(question.lower()))
    best: tuple[int, str] | None = None
    for topic, text in TOPICS:
        score = len(words & topic)
        if score and (best is None or score > best[0]):
            best = (score, text)
    return best[1] if best else None
