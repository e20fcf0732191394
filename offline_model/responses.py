"""How the offline model writes HTTP: JSON bodies, OpenAI error bodies and SSE streams."""

from __future__ import annotations

import json
import re
import secrets
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from offline_model.scripting import Fail, Hang

if TYPE_CHECKING:
    from offline_model.server import ModelHTTPServer, OfflineModelServer


class _StreamCut(Exception):
    """Raised inside a handler to abandon a response mid-way (scripted ``cut_after``)."""


class Responder(BaseHTTPRequestHandler):
    """The base of ``Handler``: writes responses, and owns two of its hooks.

    Hooks (override in a ``Handler`` subclass): ``pause`` (how a response waits) and
    ``before_event`` (called just before each SSE event is written).
    """

    protocol_version = "HTTP/1.1"
    server_version = "OfflineModel/1.0"
    sys_version = ""
    server: ModelHTTPServer

    @property
    def model(self) -> OfflineModelServer:
        """The ``OfflineModelServer`` this request arrived at (scripts, recordings, files)."""
        return self.server.model

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; tests and benchmarks would drown in it."""

    # -- hooks --------------------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` within this response (delays, token pacing, hangs).

        The default is the server's ``sleep``, cut short by ``stop()``; bench/fake.py
        paces on an absolute schedule instead.
        """
        self.model.sleep(seconds)

    def before_event(self, data: str) -> None:
        """Called just before each SSE event's bytes are written; ``data`` is its payload."""

    # -- request / response helpers -----------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_bytes(
        self, status: int, content: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("x-request-id", f"req_{secrets.token_hex(8)}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(content)
        self.wfile.flush()

    def send_json(
        self, status: int, payload: object, headers: dict[str, str] | None = None
    ) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_error(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        error = {"message": message, "type": type_, "code": code, "param": param}
        self.send_json(status, {"error": error}, headers)

    def _send_fail(self, fail: Fail) -> None:
        self.pause(fail.delay)
        headers = {}
        if fail.retry_after is not None:
            headers["retry-after"] = f"{fail.retry_after:g}"
        self._send_error(fail.status, fail.message, fail.type, fail.code, headers=headers)

    def _hang(self, hang: Hang) -> None:
        self.pause(hang.seconds)
        self.close_connection = True

    # SSE is sent with chunked transfer-encoding. With a close-delimited body a dropped
    # connection is indistinguishable from a clean end, so a cut stream would go unnoticed.
    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", f"req_{secrets.token_hex(8)}")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True

    framing = "lf"

    def _send_event(self, data: str) -> None:
        self.before_event(data)
        if self.framing != "crlf-split":
            payload = f"data: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            self.wfile.flush()
            return
        payload = f": keep-alive\r\nevent: message\r\ndata: {data}\r\n\r\n".encode()
        wide = re.search(rb"[\xc0-\xff]", payload)
        cut = wide.start() + 1 if wide else len(payload) // 2
        for index, part in enumerate((payload[:cut], payload[cut:])):
            if index:
                self.pause(0.002)  # the halves arrive in separate reads
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()

    def _end_stream(self) -> None:
        self._send_event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
