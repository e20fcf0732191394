"""Model text to safe HTML, and a whole assistant message to the HTML the page shows.

Markdown is rendered with raw HTML disabled and the result is still sanitised
by nh3: the model's output is untrusted input. Pictures in the model's Markdown
are dropped; the only images a chat shows are the app's own image URLs, placed
by tool invocations. Fenced code with a known language is highlighted by
Pygments (spans with Pygments' short class names, styled by highlight.css).

The page renders a streaming answer itself (markdown-stream.js: markdown-it,
the JavaScript original of markdown-it-py, and DOMPurify) with the allow-list
below, which the page receives as JSON (`client_policy`), so both sanitisers
enforce one list and the swap to this HTML at the end does not move the page.

A final message's text HTML is rendered once and stored with it
(`Message.html`, `Message.html_version`), not at every view: opening a long
chat spent 60 % of its time here. The stored HTML is used only while its
version equals RENDER_VERSION; **bump RENDER_VERSION whenever the HTML this
module produces for the same text changes** (Markdown options, the allowed
tags, highlighting, the user text's markup), and every stored message is
re-rendered at its next view (`segment_html`, then stored by the view with
`Message.objects.store_html`). No migration, no batch job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import nh3
from django.template.defaultfilters import linebreaksbr
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.styles import get_style_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

if TYPE_CHECKING:
    from conversations.models import Message, ToolInvocation

#: The version of what markdown_html produces. Bump it whenever the HTML for the
#: same text changes (renderer options, allow-list, highlighting), so that any
#: HTML stored under the old version (Message.html) is rendered again at its
#: next view. 2: Pygments highlighting, table column alignment kept (as
#: `align`). 3: the stored per-message HTML (Message.html_version) is keyed by it.
RENDER_VERSION = 3

#: Code longer than this is shown plain: highlighting is linear but not free, and
#: nobody reads colours in a 100 KB paste.
HIGHLIGHT_MAX_CHARS = 100_000

#: Pygments styles for the light and dark themes (highlight.css is made from them).
LIGHT_STYLE = "default"
DARK_STYLE = "github-dark"

_TAGS = {
    "p",
    "br",
    "hr",
    "strong",
    "em",
    "del",
    "code",
    "pre",
    "span",
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
#: A span may carry only Pygments' token classes (and only Pygments makes spans:
#: raw HTML is off in the Markdown renderer).
_CLASSES = {"span": {name for name in STANDARD_TYPES.values() if name}}
_URL_SCHEMES = {"http", "https", "mailto"}
_LINK_REL = "noopener noreferrer nofollow"
_LINK_TARGET = "_blank"


def _highlight(code: str, language: str, attrs: str) -> str:
    """Pygments spans for a fenced block, or "" to let markdown-it escape it plainly."""
    if not language or len(code) > HIGHLIGHT_MAX_CHARS:
        return ""
    try:
        # stripnl=False: the code keeps its leading and trailing blank lines, as
        # the page's streaming render shows them (no jump at the swap).
        lexer = get_lexer_by_name(language, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return ""
    html = str(pygments_highlight(code, lexer, HtmlFormatter(nowrap=True)))
    # Some lexers end with a newline of their own (an unclosed fence has none).
    return html[:-1] if html.endswith("\n") and not code.endswith("\n") else html


def _align_cells(state: StateCore) -> None:
    """Column alignment as `align` (allowed) instead of `style` (which the sanitiser drops).

    markdown-stream.js does the same on the page.
    """
    for token in state.tokens:
        if token.type in {"th_open", "td_open"}:
            style = str(token.attrGet("style") or "")
            if style.startswith("text-align:"):
                token.attrs.pop("style", None)
                token.attrSet("align", style.removeprefix("text-align:"))


_markdown = MarkdownIt(
    "commonmark", {"html": False, "linkify": False, "highlight": _highlight}
).enable("table")
_markdown.core.ruler.push("align_cells", _align_cells)


def markdown_html(text: str) -> str:
    return sanitize_html(_markdown.render(text))


def sanitize_html(html: str) -> str:
    """Keep only the allow-list: tags, attributes per tag, URL schemes, link rel/target."""
    return nh3.clean(
        html,
        tags=_TAGS,
        clean_content_tags={"script", "style"},
        attributes=_ATTRIBUTES,
        allowed_classes=_CLASSES,
        url_schemes=_URL_SCHEMES,
        link_rel=_LINK_REL,
        set_tag_attribute_values={"a": {"target": _LINK_TARGET}},
    )


def client_policy() -> dict[str, Any]:
    """The allow-list above as JSON for the page's own sanitiser (markdown-stream.js)."""
    return {
        "tags": sorted(_TAGS),
        "attributes": {tag: sorted(names) for tag, names in _ATTRIBUTES.items()},
        "classes": {tag: sorted(names) for tag, names in _CLASSES.items()},
        "url_schemes": sorted(_URL_SCHEMES),
        "link_rel": _LINK_REL,
        "link_target": _LINK_TARGET,
    }


def highlight_css() -> str:
    """The token colours for both themes (conversations/static/conversations/highlight.css).

    Only colours, weights and styles: a border or background on a token would
    make the highlighted block wider than the plain one shown while streaming.
    """
    blocks = []
    for media, style in (("light", LIGHT_STYLE), ("dark", DARK_STYLE)):
        formatter = HtmlFormatter(style=get_style_by_name(style))
        rules = []
        for line in formatter.get_token_style_defs(".md pre"):
            selector, _, rest = line.partition("{")
            body, _, _ = rest.partition("}")
            keep = [
                part.strip()
                for part in body.split(";")
                if part.strip().split(":")[0].strip() in {"color", "font-weight", "font-style"}
            ]
            if keep:
                rules.append(f"  {selector.strip()} {{ {'; '.join(keep)} }}")
        blocks.append(f"@media (prefers-color-scheme: {media}) {{\n" + "\n".join(rules) + "\n}")
    header = (
        "/* Code highlighting (Pygments token classes). Generated by\n"
        "   conversations.rendering.highlight_css(); tests/test_rendering.py checks it is\n"
        f'   current. Light: Pygments "{LIGHT_STYLE}", dark: "{DARK_STYLE}". */\n'
    )
    return header + "\n".join(blocks) + "\n"


def user_text_html(text: str) -> str:
    """A user's message text: plain, escaped, line breaks kept (never Markdown)."""
    return f'<p class="plain">{linebreaksbr(text, autoescape=True)}</p>'


def segment_html(message: Message, cut: list[tuple[str, ToolInvocation | None]]) -> list[str]:
    """The HTML of each text segment of `cut` (message.segments()); one for a user's message.

    The stored HTML when it is of this renderer's version, else rendered now
    and, for a final message, set on it with `html_stale` (the caller stores it).
    """
    expected = 1 if message.role == "user" else len(cut)
    if message.html_version == RENDER_VERSION and len(message.html) == expected:
        return list(message.html)
    if message.role == "user":
        html = [user_text_html(message.text)]
    else:
        html = [markdown_html(text) if text.strip() else "" for text, _ in cut]
    if message.is_final:
        message.html, message.html_version = html, RENDER_VERSION
        message.html_stale = True
    return html


def message_html(message: Message, invocations: list[ToolInvocation] | None = None) -> SafeString:
    """The message body exactly as the page shows it: text segments and tool cards.

    `invocations`: the message's tool invocations, when the caller has them.
    """
    if message.role == "user":
        return render_to_string(
            "conversations/_user_text.html",
            {
                "text_html": mark_safe(segment_html(message, [])[0]),  # noqa: S308 (escaped)
                # Prefetched by the pages that show many messages (chat view, admin).
                "attachments": message.attachments.all(),
            },
        )
    cut = message.segments(invocations)
    parts = [
        {"html": mark_safe(part), "invocation": invocation}  # noqa: S308 (sanitised)
        for part, (_, invocation) in zip(segment_html(message, cut), cut, strict=True)
    ]
    return render_to_string("conversations/_assistant_body.html", {"parts": parts})


def thread_html(messages: list[Message]) -> str:
    """Messages as the chat page renders them (the page's own templates): a branch switch."""
    return "".join(
        render_to_string("conversations/_message.html", {"message": message})
        for message in messages
    )
