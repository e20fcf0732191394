"""Recorded responses of real servers (tests/recordings/), loaded and served again.

`Recording.load("llama-cpp-python-0.3.36/tool-call")` reads a body and its
sidecar. `ReplayServer` is a tiny HTTP server on a free loopback port that
answers each POST /v1/chat/completions with the next queued recording: the
recorded status, content type and body bytes. A body the server sent chunked
is sent chunked, one HTTP chunk per SSE event as the servers did; a recording
whose connection broke (`transport_error` in the sidecar) is sent without the
terminating chunk and the connection is closed, so the client sees the same
break. Every request body is kept for the test to inspect.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

RECORDINGS = Path(__file__).resolve().parent / "recordings"


@dataclass(frozen=True)
class Recording:
    name: str  # "<server>-<version>/<scenario>", relative to tests/recordings
    body: bytes
    sidecar: dict[str, Any]

    @classmethod
    def load(cls, name: str) -> Recording:
        path = RECORDINGS / name
        sidecar = json.loads(path.with_suffix(".json").read_text())
        return cls(name, path.with_suffix(".body").read_bytes(), sidecar)

    @classmethod
    def all_names(cls) -> list[str]:
        return sorted(
            str(path.relative_to(RECORDINGS).with_suffix("")) for path in RECORDINGS.rglob("*.body")
        )

    @property
    def status(self) -> int:
        return int(self.sidecar["status"])

    @property
    def broken(self) -> bool:
        """The connection broke before the body ended, when it was recorded."""
        return bool(self.sidecar.get("transport_error"))

    def events(self) -> list[bytes]:
        """The body cut after each blank line (one SSE event per piece)."""
        pieces, start = [], 0
        while (end := self.body.find(b"\n\n", start)) != -1:
            pieces.append(self.body[start : end + 2])
            start = end + 2
        if start < len(self.body):
            pieces.append(self.body[start:])
        return pieces


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    replay: ReplayServer

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no reverse-DNS lookup of the host name
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        replay = self.server.replay
        path = self.path.split("?", 1)[0]
        if path != "/v1/chat/completions":
            self._send(404, b'{"error": {"message": "not replayed here"}}', "application/json")
            return
        recording = replay._next(json.loads(raw) if raw else None)
        if recording is None:
            message = b'{"error": {"message": "replay: no recording left for this request"}}'
            self._send(500, message, "application/json")
            return
        content_type = recording.sidecar.get("content_type") or "text/event-stream"
        chunked = recording.sidecar.get("transfer_encoding") == "chunked" or recording.broken
        if not chunked:
            self._send(recording.status, recording.body, content_type)
            return
        self.send_response(recording.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")  # the client must not reuse it
        self.end_headers()
        try:
            for piece in recording.events():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            if not recording.broken:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True  # a broken recording ends with the connection

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


class ReplayServer:
    """Answers chat requests with queued recordings, in order (see the module docstring)."""

    def __init__(self, *, refuse_null_content: str | None = None) -> None:
        # As llama-cpp-python does: a request with a message whose content is null
        # gets this recording (its HTTP 500) instead of the next one in the queue.
        self.null_refusal = Recording.load(refuse_null_content) if refuse_null_content else None
        self._lock = threading.Lock()
        self._queue: deque[Recording] = deque()
        self.requests: list[dict[str, Any] | None] = []
        self._httpd: _Server | None = None

    def start(self) -> Self:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.replay = self
        self._httpd = httpd
        serve = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
        serve.daemon = True
        serve.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def queue(self, *names: str) -> None:
        with self._lock:
            self._queue.extend(Recording.load(name) for name in names)

    def left(self) -> int:
        with self._lock:
            return len(self._queue)

    def _next(self, body: dict[str, Any] | None) -> Recording | None:
        with self._lock:
            self.requests.append(body)
            messages = (body or {}).get("messages") or []
            if self.null_refusal and any(m.get("content", "") is None for m in messages):
                return self.null_refusal
            return self._queue.popleft() if self._queue else None
