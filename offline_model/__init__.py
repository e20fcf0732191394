"""The built-in "offline model": a tiny OpenAI-compatible HTTP server.

It exists so that three things work without any network or API key:

* the app's embedded default model (``make run`` with no key configured),
* the test suite, which talks to it over real HTTP with the real ``openai`` client, so
  the exact wire format (SSE chunks, tool-call deltas, error bodies, retry headers) is
  exercised rather than mocked, and
* benchmarks, which run it as a separate process (see ``python -m offline_model``).

Only the standard library and Pillow are used, and Django is deliberately not imported so
the package is importable before (or without) settings.

Unscripted behaviour is deterministic: the same messages always produce the same reply and
the same prompt always produces the same PNG bytes. Tests and benchmarks can queue scripted
responses (``Reply``, ``Fail``, ``Hang``, ``ImageReply``) that are consumed one per request,
and serve with a ``Handler`` subclass whose hooks they override (``offline_model.handler``
lists them; bench/fake.py is the worked example).

Modules, one job each: ``scripting`` (the vocabulary above), ``planner`` (the unscripted
reply: a picture, an edit of the last one, several), ``knowledge`` (canned answers to the
demo's questions), ``drawing`` (the PNGs), ``editing`` (edits of uploaded PNGs, and the
partial images of a streamed answer), ``multipart`` (reading an edit's upload),
``responses`` (HTTP and SSE writing), ``chat`` and ``images`` (the endpoints: chat
completions, image generations and edits), ``handler`` (routing and the hooks),
``server`` (``OfflineModelServer``), ``__main__`` (the command line).
"""

from offline_model.chat import CHAT_MODEL
from offline_model.drawing import IMAGE_SIZES, parse_size, render_image
from offline_model.handler import Handler
from offline_model.images import IMAGE_MODEL
from offline_model.planner import (
    last_user_text,
    picture_subject,
    plan_chat,
    tokenize,
    wants_picture,
)
from offline_model.scripting import (
    ChatScript,
    Fail,
    Hang,
    ImageReply,
    ImageScript,
    RecordedRequest,
    Reply,
    ToolCall,
)
from offline_model.server import OfflineModelServer

__all__ = [
    "CHAT_MODEL",
    "IMAGE_MODEL",
    "IMAGE_SIZES",
    "ChatScript",
    "Fail",
    "Handler",
    "Hang",
    "ImageReply",
    "ImageScript",
    "OfflineModelServer",
    "RecordedRequest",
    "Reply",
    "ToolCall",
    "last_user_text",
    "parse_size",
    "picture_subject",
    "plan_chat",
    "render_image",
    "tokenize",
    "wants_picture",
]
