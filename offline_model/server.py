"""The offline model's HTTP server: routing, and ``OfflineModelServer`` on a daemon thread."""

from __future__ import annotations

import json
import secrets
import socketserver
import threading
from collections import OrderedDict, deque
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Self

from offline_model.chat import CHAT_MODEL, _ChatHandler
from offline_model.images import IMAGE_MODEL, _ImagesHandler
from offline_model.responses import _StreamCut
from offline_model.scripting import ChatScript, ImageScript, RecordedRequest

# URL-format images are kept in memory; cap them so a long benchmark run can't grow forever.
_MAX_STORED_FILES = 256


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Benchmarks open many connections at once; the default backlog of 5 drops SYNs.
    request_queue_size = 128
    model: OfflineModelServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse-DNS lookup that can stall
        # for seconds in sandboxes without DNS. We never need the name, so skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(_ChatHandler, _ImagesHandler):
    """Routes each request to its endpoint; answers the small GET routes itself."""

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
        model = self.server.model
        path, _, query = self.path.partition("?")
        raw = self._read_body() if method == "POST" else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        headers = {key.lower(): value for key, value in self.headers.items()}
        model._record(RecordedRequest(method, path, headers, body, query))

        # Any prefix: /v1/… as OpenAI, /openai/deployments/<name>/… as Azure's
        # api-version endpoints.
        if method == "POST" and path.endswith("/chat/completions"):
            self._chat(body, raw)
        elif method == "POST" and path.endswith("/images/generations"):
            self._images(body, raw)
        elif method == "GET" and path == "/v1/models":
            data = [
                {"id": name, "object": "model", "created": 0, "owned_by": "offline"}
                for name in (CHAT_MODEL, IMAGE_MODEL)
            ]
            self._send_json(200, {"object": "list", "data": data})
        elif method == "GET" and path.startswith("/files/"):
            content = model._file(path.removeprefix("/files/"))
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


# --------------------------------------------------------------------------------------
# The server object
# --------------------------------------------------------------------------------------


class OfflineModelServer:
    """An OpenAI-compatible server on a background daemon thread.

    >>> with OfflineModelServer() as server:                      # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="offline")
    """

    # Subclasses (bench/fake.py) swap in a handler that records more.
    server_class: type[_HTTPServer] = _HTTPServer
    handler_class: type[_Handler] = _Handler

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self.token_delay = token_delay
        self.first_token_delay = first_token_delay
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._chat_script: deque[ChatScript] = deque()
        self._image_script: deque[ImageScript] = deque()
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        """Bind (port 0 picks a free port) and serve on a daemon thread."""
        if self._httpd is not None:
            return self
        self._stopping = threading.Event()
        httpd = self.server_class((self.host, self.port), self.handler_class)
        httpd.model = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"offline-model:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and wake any request that is sleeping or hanging."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = self._thread = None

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
    def public_host(self) -> str:
        """The host clients should dial (a wildcard bind is reachable on loopback)."""
        return "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host  # noqa: S104

    @property
    def base_url(self) -> str:
        return f"http://{self.public_host}:{self.port}/v1"

    # -- scripting ----------------------------------------------------------------------

    def script_chat(self, *items: ChatScript) -> None:
        """Queue responses for the next chat requests (one item per request, FIFO)."""
        with self._lock:
            self._chat_script.extend(items)

    def script_images(self, *items: ImageScript) -> None:
        """Queue responses for the next image requests (one item per request, FIFO)."""
        with self._lock:
            self._image_script.extend(items)

    def reset(self) -> None:
        """Forget scripts, recorded requests and stored files."""
        with self._lock:
            self._chat_script.clear()
            self._image_script.clear()
            self._requests.clear()
            self._files.clear()

    # -- recorded requests --------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def image_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/images/generations")]

    # -- used by the handler ------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_chat(self) -> ChatScript | None:
        with self._lock:
            return self._chat_script.popleft() if self._chat_script else None

    def _next_image(self) -> ImageScript | None:
        with self._lock:
            return self._image_script.popleft() if self._image_script else None

    def _store_file(self, content: bytes) -> str:
        name = f"{secrets.token_hex(16)}.png"
        with self._lock:
            self._files[name] = content
            while len(self._files) > _MAX_STORED_FILES:
                self._files.popitem(last=False)
        return name

    def _file(self, name: str) -> bytes | None:
        with self._lock:
            return self._files.get(name)

    def _sleep(self, seconds: float) -> None:
        # Like time.sleep (each request has its own thread) but cut short by stop(), so a
        # Hang(60) in a test doesn't keep a thread alive after the server is gone.
        if seconds > 0:
            self._stopping.wait(seconds)
