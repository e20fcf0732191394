"""``OfflineModelServer``: the offline model on a daemon thread, with its scripts and records."""

from __future__ import annotations

import secrets
import socketserver
import threading
from collections import OrderedDict, deque
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Self

from offline_model.handler import Handler
from offline_model.scripting import ChatScript, ImageScript, RecordedRequest

# URL-format images are kept in memory; cap them so a long benchmark run can't grow forever.
_MAX_STORED_FILES = 256


class ModelHTTPServer(ThreadingHTTPServer):
    """The stdlib threading server, bound to its ``OfflineModelServer``."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[Handler],
        model: OfflineModelServer,
        backlog: int,
    ) -> None:
        self.model = model
        # Set before the base class binds and listens: listen() reads it.
        self.request_queue_size = backlog
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse-DNS lookup that can stall
        # for seconds in sandboxes without DNS. We never need the name, so skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class OfflineModelServer:
    """An OpenAI-compatible server on a background daemon thread.

    >>> with OfflineModelServer() as server:                      # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="offline")

    ``handler`` serves with a ``Handler`` subclass (see ``offline_model.handler`` for its
    hooks); ``backlog`` is the listen queue (benchmarks open hundreds of streams at once).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
        handler: type[Handler] = Handler,
        backlog: int = 128,
        preview_delay: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.token_delay = token_delay
        self.first_token_delay = first_token_delay
        # The pause before each streamed partial image; by default paced like the
        # text (ten tokens' time), so that previews are visible in a demo and
        # free in tests that run without delays.
        self.preview_delay = 10 * token_delay if preview_delay is None else preview_delay
        self.handler = handler
        # Benchmarks open many connections at once; the default backlog of 5 drops SYNs.
        self.backlog = backlog
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._chat_script: deque[ChatScript] = deque()
        self._image_script: deque[ImageScript] = deque()
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._stopping = threading.Event()
        self._httpd: ModelHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        """Bind (port 0 picks a free port) and serve on a daemon thread."""
        if self._httpd is not None:
            return self
        self._stopping = threading.Event()
        httpd = ModelHTTPServer((self.host, self.port), self.handler, self, self.backlog)
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

    def edit_requests(self) -> list[RecordedRequest]:
        """The images edit requests; their uploaded files are in ``files``."""
        return [r for r in self.requests if r.path.endswith("/images/edits")]

    # -- used by the handler (and by Handler subclasses) ------------------------------------

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def next_chat_script(self) -> ChatScript | None:
        with self._lock:
            return self._chat_script.popleft() if self._chat_script else None

    def next_image_script(self) -> ImageScript | None:
        with self._lock:
            return self._image_script.popleft() if self._image_script else None

    def store_file(self, content: bytes) -> str:
        """Keep a PNG for ``GET /files/<name>`` and return its name (the oldest go first)."""
        name = f"{secrets.token_hex(16)}.png"
        with self._lock:
            self._files[name] = content
            while len(self._files) > _MAX_STORED_FILES:
                self._files.popitem(last=False)
        return name

    def stored_file(self, name: str) -> bytes | None:
        with self._lock:
            return self._files.get(name)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the server stops meanwhile."""
        # Like time.sleep (each request has its own thread) but cut short by stop(), so a
        # Hang(60) in a test doesn't keep a thread alive after the server is gone.
        if seconds > 0:
            self._stopping.wait(seconds)
