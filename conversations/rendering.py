"""Model text to safe HTML, and a whole assistant message to the HTML the page shows.

Markdown is rendered with raw HTML disabled and the result is still sanitised
by nh3: the model's output is untrusted input. Pictures in the model's Markdown
are dropped; the only images a chat shows are the app's own image URLs, placed
by tool invocations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import nh3
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

if TYPE_CHECKING:
    from conversations.models import Message, ToolInvocation

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")

_TAGS = {
    "p",
    "br",
    "hr",
    "strong",
    "em",
    "del",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "a",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
}
_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "code": {"class"},
    "th": {"align"},
    "td": {"align"},
}


def markdown_html(text: str) -> str:
    html = _markdown.render(text)
    return nh3.clean(
        html,
        tags=_TAGS,
        clean_content_tags={"script", "style"},
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )


def message_html(message: Message, invocations: list[ToolInvocation] | None = None) -> SafeString:
    """The message body exactly as the page shows it: text segments and tool cards.

    `invocations`: the message's tool invocations, when the caller has them.
    """
    if message.role == "user":
        return render_to_string("conversations/_user_text.html", {"text": message.text})
    parts = [
        {
            "html": mark_safe(markdown_html(text)) if text.strip() else "",  # noqa: S308 (sanitised)
            "invocation": invocation,
        }
        for text, invocation in message.segments(invocations)
    ]
    return render_to_string("conversations/_assistant_body.html", {"parts": parts})


def thread_html(messages: list[Message]) -> str:
    """Messages as the chat page renders them (the page's own templates): a branch switch."""
    return "".join(
        render_to_string("conversations/_message.html", {"message": message})
        for message in messages
    )
