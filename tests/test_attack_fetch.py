"""SSRF through the image API's `url`: the server fetches only from public addresses.

The "internal" servers here all listen on loopback (the only place tests may send
traffic); addresses of other ranges are checked by the address rule alone, with
no connection attempted. Through daphne: the image provider (the fake) answers
with URLs pointing at loopback in several spellings, and the turn gets a typed
tool failure while the fake sees no download.
"""

from __future__ import annotations

import ipaddress
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conversations import fetching
from offline_model import ImageReply, OfflineModelServer, Reply, ToolCall
from tests.attack import Visitor, normal_turn, ready_socket, serve
from tests.servers import AppServer

LOOPBACK = [ipaddress.ip_network("127.0.0.1/32")]
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cf0000000301010018dd8db00000000049454e44ae426082"
)


class Internal(ThreadingHTTPServer):
    """A stand-in for an internal service: it records every request it gets."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), InternalHandler)
        self.seen: list[str] = []
        self.redirect_to = ""

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class InternalHandler(BaseHTTPRequestHandler):
    server: Internal

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        if self.path == "/trickle":
            # One byte at a time, never finishing within any sane deadline.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(100):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.3)
            return
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.end_headers()
            return
        if self.path == "/big":
            self.send_response(200)
            self.end_headers()  # no length: the cap must hold while streaming
            for _ in range(64):
                self.wfile.write(b"y" * 1024)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)


@pytest.fixture(scope="module")
def internal() -> Iterator[Internal]:
    server = Internal()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# --- the address rule ------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "0.0.0.0",
        "::",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "169.254.169.254",  # the cloud metadata endpoint
        "fe80::1",
        "fd00::1",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert fetching.refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_fetched_from(address: str) -> None:
    assert fetching.refusal(ipaddress.ip_address(address)) is None


def test_an_allow_list_names_the_exceptions() -> None:
    allowed = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8")]
    assert fetching.refusal(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert fetching.refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allowed) is None
    assert fetching.refusal(ipaddress.ip_address("10.9.8.7"), allowed) is None
    assert fetching.refusal(ipaddress.ip_address("127.0.0.2"), allowed) is not None
    assert fetching.refusal(ipaddress.ip_address("169.254.169.254"), allowed) is not None


# --- the fetcher, over real HTTP to loopback ----------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/png",
        "http://localhost:{port}/png",
        "http://2130706433:{port}/png",  # decimal
        "http://0x7f000001:{port}/png",  # hex
        "http://0177.0.0.1:{port}/png",  # octal
        "http://127.1:{port}/png",  # short form
        "http://[::1]:{port}/png",
        "http://[::ffff:127.0.0.1]:{port}/png",
    ],
)
async def test_loopback_in_any_spelling_is_refused_before_connecting(
    internal: Internal, url: str
) -> None:
    before = len(internal.seen)
    with pytest.raises(fetching.FetchError) as refused:
        await fetching.fetch(url.format(port=internal.port), max_bytes=10_000, deadline=5)
    assert refused.value.code == "refused"
    assert len(internal.seen) == before  # nothing reached the internal service


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1/", "ftp://x/"])
async def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(fetching.FetchError) as refused:
        await fetching.fetch(url, max_bytes=10_000, deadline=5)
    assert refused.value.code == "refused"


async def test_an_allowed_network_is_fetched_from(internal: Internal) -> None:
    body = await fetching.fetch(
        f"http://127.0.0.1:{internal.port}/png", max_bytes=10_000, deadline=5, allowed=LOOPBACK
    )
    assert body == PNG


async def test_a_redirect_to_a_refused_address_is_refused(internal: Internal) -> None:
    internal.redirect_to = f"http://2130706434:{internal.port}/png"  # 127.0.0.2
    before = len(internal.seen)
    with pytest.raises(fetching.FetchError) as refused:
        await fetching.fetch(
            f"http://127.0.0.1:{internal.port}/redirect",
            max_bytes=10_000,
            deadline=5,
            allowed=LOOPBACK,
        )
    assert refused.value.code == "refused"
    assert internal.seen[before:] == ["/redirect"]


async def test_a_trickling_body_ends_at_the_total_deadline(internal: Internal) -> None:
    started = time.monotonic()
    with pytest.raises(fetching.FetchError) as slow:
        await fetching.fetch(
            f"http://127.0.0.1:{internal.port}/trickle",
            max_bytes=10_000,
            deadline=1.5,
            allowed=LOOPBACK,
        )
    assert slow.value.code == "timeout"
    assert time.monotonic() - started < 4


async def test_a_body_over_the_cap_is_cut_off(internal: Internal) -> None:
    with pytest.raises(fetching.FetchError) as big:
        await fetching.fetch(
            f"http://127.0.0.1:{internal.port}/big",
            max_bytes=10_000,
            deadline=5,
            allowed=LOOPBACK,
        )
    assert big.value.code == "too_large"


# --- through the app, served by daphne ------------------------------------------------


@pytest.fixture(scope="module")
def model() -> Iterator[OfflineModelServer]:
    with OfflineModelServer(token_delay=0.0) as server:
        yield server


@pytest.fixture(scope="module")
def app(model: OfflineModelServer) -> Iterator[AppServer]:
    yield from serve(model, CHATIMG_IMAGE_RESPONSE_FORMAT="url")


@pytest.fixture(scope="module")
def lenient_app(model: OfflineModelServer) -> Iterator[AppServer]:
    """An operator who allows a provider on this host (a LocalAI on 127.0.0.1)."""
    yield from serve(
        model,
        CHATIMG_IMAGE_RESPONSE_FORMAT="url",
        CHATIMG_IMAGE_FETCH_ALLOW="127.0.0.1",
        CHATIMG_IMAGE_FETCH_TIMEOUT="2",
    )


async def draw(app: AppServer, model: OfflineModelServer, image: ImageReply | None) -> list[Any]:
    name = f"d{uuid.uuid4().hex[:8]}"
    app.create_user(name)
    visitor = Visitor(app)
    visitor.login(name)
    sock = await ready_socket(app, session=visitor.session)
    model.script_chat(Reply(tool_calls=[ToolCall()]), Reply(text="Here it is."))
    if image is not None:
        model.script_images(image)
    await sock.send("message.send", client_message_id=uuid.uuid4().hex, text="draw a kite")
    frames = await sock.receive_until("assistant.completed", "assistant.failed", timeout=30)
    # After the attack the product still works on the same socket.
    model.reset()
    await normal_turn(sock)
    await sock.close()
    return frames


def tool_failure(frames: list[Any]) -> str:
    failed = [f for f in frames if f["type"] == "tool.failed"]
    assert failed, frames
    return str(failed[-1]["error"]["code"])


@pytest.mark.parametrize(
    "url",
    [
        None,  # the provider's own URL, on loopback
        "http://2130706433:{port}/files/x.png",
        "http://[::1]:{port}/files/x.png",
        "http://localhost:{port}/files/x.png",
    ],
)
async def test_a_provider_url_on_loopback_is_not_fetched(
    app: AppServer, model: OfflineModelServer, url: str | None
) -> None:
    model.reset()
    image = ImageReply(url=url.format(port=model.port)) if url else None
    frames = await draw(app, model, image)
    assert tool_failure(frames) == "image_url_refused"
    assert not [r for r in model.requests if r.method == "GET"], "the server fetched it"


async def test_a_trickling_provider_url_times_out_as_a_whole(
    lenient_app: AppServer, model: OfflineModelServer, internal: Internal
) -> None:
    model.reset()
    started = time.monotonic()
    frames = await draw(
        lenient_app, model, ImageReply(url=f"http://127.0.0.1:{internal.port}/trickle")
    )
    assert tool_failure(frames) == "image_timeout"
    assert time.monotonic() - started < 20


async def test_an_allowed_provider_url_is_fetched(
    lenient_app: AppServer, model: OfflineModelServer
) -> None:
    model.reset()
    frames = await draw(lenient_app, model, None)
    assert [f for f in frames if f["type"] == "tool.completed"], frames
