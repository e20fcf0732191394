"""What the offline model says when nothing is scripted, and when it calls ``generate_image``.

Pure functions of the request body, deterministic: the same messages always produce the
same reply.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from offline_model import knowledge
from offline_model.scripting import Reply, ToolCall

_TOKEN_RE = re.compile(r"\S+\s*|\s+")
_VERBS = r"draw|paint|sketch|illustrate"  # not "render": "how does Django render…"
_NOUNS = r"picture|image|illustration|photo|photograph|drawing|painting|sketch|portrait|artwork"
# Deliberately loose: this is a demo model, and a false positive just draws a picture.
_PICTURE_REQUEST_RE = re.compile(
    rf"\b(?:{_VERBS})\b"
    rf"|\b(?:{_NOUNS})s?\s+(?:of|showing|depicting)\b"
    rf"|\b(?:generate|create|make|show|give|send)\b(?:\s+\S+){{0,3}}?\s+(?:{_NOUNS})s?\b",
    re.IGNORECASE,
)
_SUBJECT_AFTER_NOUN_RE = re.compile(
    rf"\b(?:{_NOUNS})s?\s+(?:of|showing|depicting)\s+(?P<subject>.+)", re.IGNORECASE | re.DOTALL
)
_SUBJECT_AFTER_VERB_RE = re.compile(
    r"^(?:(?:please|hey|ok(?:ay)?|now|so|can|could|would|will|you|i'd|i\s+would|like|"
    r"want|to|i|me|for)[\s,]+)*"
    rf"(?:{_VERBS}|generate|create|make|show|give|send)\s+(?:(?:me|us)\s+)?(?P<subject>.+)",
    re.IGNORECASE | re.DOTALL,
)
_EXAMPLE_PROMPTS = (
    "a lighthouse at dusk",
    "a fox in a snowy forest",
    "a red sailboat on a calm sea",
    "a city skyline at night",
)


def _text_of(content: object) -> str:
    """Flatten message ``content``, which may be a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return " ".join(p for p in parts if p)
    return ""


def last_user_text(messages: list[Any]) -> str:
    """The text of the last ``user`` message ("" when there is none)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _squash(text: str) -> str:
    return " ".join(text.split())


def _shorten(text: str, limit: int) -> str:
    text = _squash(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def wants_picture(text: str) -> bool:
    """Whether a user message reads like a request for an image."""
    return bool(_PICTURE_REQUEST_RE.search(text))


def picture_subject(text: str) -> str:
    """Strip the request phrasing: "Please draw me a lighthouse at dusk!" -> "a lighthouse…"."""
    text = _squash(text).rstrip(" .!?")
    match = _SUBJECT_AFTER_NOUN_RE.search(text) or _SUBJECT_AFTER_VERB_RE.match(text)
    subject = match.group("subject").strip(" .!?") if match else text
    subject = re.sub(r"[\s,]+(?:for\s+(?:me|us)|please)$", "", subject, flags=re.IGNORECASE)
    return _shorten(subject or text, 300)


def _offers_tool(body: dict[str, Any], name: str) -> bool:
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and (tool.get("function") or {}).get("name") == name:
            return True
    return False


def _follow_up(tool_content: str) -> str:
    """The sentence the model says after the app returns a generate_image result."""
    try:
        data = json.loads(tool_content)
    except (TypeError, ValueError):
        data = None
    if not isinstance(data, dict):
        return f"The tool replied: {_shorten(tool_content, 200) or '(nothing)'}"
    if data.get("status") == "error" or "error" in data:
        reason = data.get("error") or "something went wrong"
        return f"Sorry, I couldn't make that image: {reason}"
    prompt = data.get("prompt") or data.get("revised_prompt")
    count = len(data.get("image_ids") or []) or 1
    if data.get("edited_from"):
        return f"Here it is, edited: {prompt or 'as you asked'}. Ask me for more changes."
    if count > 1:
        return (
            f"Here are {count} pictures of {prompt or 'your request'}. "
            "Ask me to change any of them."
        )
    if prompt:
        return f"Here is your picture of {prompt}. Ask me for changes or another one."
    return "Here is your picture. Ask me for changes or another one."


def _default_reply(messages: list[Any]) -> str:
    user_text = last_user_text(messages)
    digest = hashlib.sha256(user_text.encode()).digest()
    example = _EXAMPLE_PROMPTS[digest[0] % len(_EXAMPLE_PROMPTS)]
    if not user_text.strip():
        return (
            "Hello! I'm the **built-in offline model**, running without any API key. "
            f'Ask me to *draw* something, like **"draw {example}"**.'
        )
    known = knowledge.answer(user_text)
    if known is not None:
        return known
    return (
        f"I'm the **built-in offline model**: I only know a few topics (websockets, "
        f"Django, Channels, how this app stores images), and "
        f'"{_shorten(re.sub(r"[*_`]+", "", user_text), 80)}" is not one of them. '
        f'Try asking me to *draw* something, like **"draw {example}"**, '
        'then to change it, like **"make it night"**.'
    )


# "make it night", "now make it stormy", "turn it blue", "add a moon to it",
# "put the fox from the first picture into this one", "edit the image: …".
_EDIT_REQUEST_RE = re.compile(
    r"^(?:(?:please|ok(?:ay)?|now|and|then|so|can you|could you)[\s,]+)*"
    r"(?:make|turn|change|add|remove|put|edit|give|recolou?r|paint)\b"
    r"(?:(?!\b(?:draw|sketch|illustrate)\b).)*"
    r"\b(?:it|this|that|them|one|picture|image|drawing|photo)\b",
    re.IGNORECASE | re.DOTALL,
)
_UUID_RE = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_EDIT_PREFIX_RE = re.compile(r"^\s*edit image [0-9a-f-]{36}\s*:\s*", re.IGNORECASE)
_COUNT_WORDS = {"two": 2, "three": 3, "four": 4, "2": 2, "3": 3, "4": 4}
_COUNT_RE = re.compile(
    r"\b(two|three|four|2|3|4)\s+(?:\w+\s+){0,2}?"
    r"(?:pictures|images|variations|versions|drawings|paintings|sketches|options)\b",
    re.IGNORECASE,
)


def wants_edit(text: str) -> bool:
    """Whether a user message reads like a change to an earlier picture."""
    return bool(_EDIT_REQUEST_RE.search(_squash(text)))


def requested_count(text: str) -> int:
    """How many images the message asks for ("three pictures of …" → 3); 1 by default."""
    match = _COUNT_RE.search(text)
    return _COUNT_WORDS[match.group(1).lower()] if match else 1


# How the app names a picture the user attached, in the user's message.
_ATTACHMENT_RE = re.compile(r"\[image attachment ([0-9a-f-]{36})\]")


def earlier_image_ids(messages: list[Any]) -> list[str]:
    """Every image of this conversation, oldest first: those the app's tool results
    reported, and the pictures the user attached (named in their messages)."""
    ids: list[str] = []
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            found_here = _ATTACHMENT_RE.findall(_text_of(message.get("content")))
            ids.extend(value for value in found_here if value not in ids)
        if not isinstance(message, dict) or message.get("role") != "tool":
            continue
        try:
            data = json.loads(_text_of(message.get("content")))
        except (TypeError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("status") != "ok":
            continue
        found = data.get("image_ids") or [data.get("image_id")]
        ids.extend(value for value in found if isinstance(value, str) and value not in ids)
    return ids


def _tool_max_n(body: dict[str, Any], name: str) -> int:
    for tool in body.get("tools") or []:
        function = (tool.get("function") or {}) if isinstance(tool, dict) else {}
        if function.get("name") == name:
            n = ((function.get("parameters") or {}).get("properties") or {}).get("n") or {}
            maximum = n.get("maximum") if isinstance(n, dict) else None
            return maximum if isinstance(maximum, int) else 1
    return 1


def plan_chat(body: dict[str, Any]) -> Reply:
    """Decide the unscripted reply for a chat request (pure function, easy to test)."""
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        # Several trailing tool messages happen with parallel tool calls; answer each.
        results: list[str] = []
        for message in reversed(messages):
            if not isinstance(message, dict) or message.get("role") != "tool":
                break
            results.append(_follow_up(_text_of(message.get("content"))))
        return Reply(text=" ".join(reversed(results)))
    user_text = last_user_text(messages)
    earlier = earlier_image_ids(messages)
    if (
        user_text
        and earlier
        and wants_edit(user_text)
        and not wants_picture(user_text)
        and _offers_tool(body, "edit_image")
    ):
        # The image named by id (the page's Edit button writes "Edit image <id>: …"),
        # else the latest; "the first picture" joins as a reference.
        named = [value for value in _UUID_RE.findall(user_text) if value in earlier]
        sources = [named[0] if named else earlier[-1]]
        if re.search(r"\bfirst\b", user_text, re.IGNORECASE) and earlier[0] != earlier[-1]:
            sources.append(earlier[0])
        said = _ATTACHMENT_RE.sub("", _EDIT_PREFIX_RE.sub("", user_text)).strip()
        change = _shorten(said.rstrip(" .!?"), 300) or "edit it"
        return Reply(
            text=f"Sure, let me change it: {change[0].lower() + change[1:]}.",
            tool_calls=[ToolCall("edit_image", {"image_ids": sources, "prompt": change})],
        )
    if user_text and wants_picture(user_text) and _offers_tool(body, "generate_image"):
        subject = picture_subject(user_text)
        arguments: dict[str, Any] = {"prompt": subject}
        count = min(requested_count(user_text), _tool_max_n(body, "generate_image"))
        if count > 1:
            arguments["n"] = count
        return Reply(
            text=f"Sure, let me draw {subject}.",
            tool_calls=[ToolCall("generate_image", arguments)],
        )
    return Reply(text=_default_reply(messages))


def tokenize(text: str) -> list[str]:
    """Word-like streaming tokens; joining them gives back ``text`` exactly."""
    return _TOKEN_RE.findall(text)
