"""The request handler tests and benchmarks extend: routing, and the list of every hook.

``OfflineModelServer(handler=MyHandler)`` serves with a subclass of ``Handler``. Its
hooks, each a plain method to override (call ``super()`` to keep the default):

* ``extra_route(method, path, body)``: answer a route of your own; return True if it did
  (such requests are not recorded).
* ``chat_script(body)`` / ``image_script(body)``: what to answer this request; the
  default pops the server's script queue, None falls back to the offline model.
* ``render(prompt, width, height)``: the PNG for a prompt.
* ``edit(sources, prompt, size, mask, variant)``: the PNG for an images edit request.
* ``pause(seconds)``: every wait inside a response (delays, token pacing, hangs).
* ``before_event(data)``: just before each SSE event's bytes are written.
* ``before_image_response(content)`` / ``after_image_response(content)``: around a
  successful image response's bytes.

A handler instance lives for one connection (HTTP/1.1 keep-alive may carry several
requests), on that connection's own thread; ``self.model`` is the server object.
"""

from __future__ import annotations

import json
from typing import Any

from offline_model.chat import CHAT_MODEL, ChatEndpoint
from offline_model.images import IMAGE_MODEL, ImagesEndpoint
from offline_model.multipart import UploadedFile, parse_form
from offline_model.responses import _StreamCut
from offline_model.scripting import RecordedRequest


class Handler(ChatEndpoint, ImagesEndpoint):
    """Routes each request to its endpoint; answers the small GET routes itself."""

    def extra_route(self, method: str, path: str, body: dict[str, Any] | None) -> bool:
        """Answer a route of your own (with ``send_json`` …) and return True; default none.

        Called for every request, after its body is read and before it is recorded.
        """
        return False

    # -- entry points -------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            self._route(method)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, _StreamCut):
            # The client went away (or we cut the stream on purpose): nothing to report.
            self.close_connection = True

    def _route(self, method: str) -> None:
        model = self.model
        path, _, query = self.path.partition("?")
        raw = self._read_body() if method == "POST" else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        files: list[UploadedFile] = []
        content_type = self.headers.get("Content-Type") or ""
        if method == "POST" and content_type.lower().startswith("multipart/form-data"):
            try:
                fields, files = parse_form(content_type, raw)
                body = dict(fields)
            except ValueError:
                body = None
        if self.extra_route(method, path, body):
            return
        headers = {key.lower(): value for key, value in self.headers.items()}
        recorded = tuple((f.field, f.filename, f.content_type, f.data) for f in files)
        model.record(RecordedRequest(method, path, headers, body, query, recorded))

        # Any prefix: /v1/… as OpenAI, /openai/deployments/<name>/… as Azure's
        # api-version endpoints.
        if method == "POST" and path.endswith("/chat/completions"):
            self._chat(body, raw)
        elif method == "POST" and path.endswith("/images/generations"):
            self._images(body)
        elif method == "POST" and path.endswith("/images/edits"):
            self._edits(body, files)
        elif method == "GET" and path == "/v1/models":
            data = [
                {"id": name, "object": "model", "created": 0, "owned_by": "offline"}
                for name in (CHAT_MODEL, IMAGE_MODEL)
            ]
            self.send_json(200, {"object": "list", "data": data})
        elif method == "GET" and path.startswith("/files/"):
            content = model.stored_file(path.removeprefix("/files/"))
            if content is None:
                self._send_error(404, "No such file.", "invalid_request_error", "not_found")
            else:
                self._send_bytes(200, content, "image/png")
        else:
            self._send_error(
                404,
                f"Unknown request URL: {method} {path}.",
                "invalid_request_error",
                "unknown_url",
            )
