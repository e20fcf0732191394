"""Shared test fixtures: real database, real HTTP to the OpenAI fake, real sockets."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from offline_model import OfflineModelServer


@pytest.fixture(scope="session")
def openai_server() -> Iterator[OfflineModelServer]:
    with OfflineModelServer() as server:
        yield server


@pytest.fixture
def fake_openai(openai_server: OfflineModelServer, settings: Any) -> OfflineModelServer:
    """Point the app at the scriptable OpenAI fake, as if it were a real provider."""
    openai_server.reset()
    settings.OFFLINE_MODEL = False
    settings.OPENAI_API_KEY = settings.OPENAI_IMAGE_API_KEY = "sk-test"
    settings.OPENAI_BASE_URL = settings.OPENAI_IMAGE_BASE_URL = openai_server.base_url
    settings.CHAT_MODEL = "gpt-test"
    settings.IMAGE_MODEL = "gpt-image-test"
    settings.IMAGE_SIZE = "256x256"
    settings.LLM_MAX_RETRIES = 1
    settings.LLM_TITLES = False  # tests that want the title request turn it on
    # Plain (unstreamed) image requests unless a test turns previews on
    # (settings.IMAGE_PREVIEWS = {} gives the model table's default).
    settings.IMAGE_PREVIEWS = {"*": 0}
    return openai_server


@pytest.fixture(autouse=True)
def local_storage(settings: Any, tmp_path: Any) -> Any:
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }
    return tmp_path / "media"


@pytest.fixture(autouse=True)
def answer_streams(settings: Any, tmp_path: Any) -> Any:
    """Answers in flight (without Redis) go to the test's own folder, not the checkout."""
    settings.STREAM_DIR = str(tmp_path / "answer-streams")
    return tmp_path / "answer-streams"


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    """Rate-limit counters must not leak from one test into the next.

    On Redis only this checkout's keys go (its prefix): cache.clear() would
    FLUSHDB, the keys of another checkout's suite running on the same Redis too.
    """
    from django.conf import settings
    from django.core.cache import cache

    if settings.REDIS_URL:
        client = cache._cache.get_client(write=True)  # type: ignore[attr-defined]
        for key in client.scan_iter(match=f"{settings.REDIS_PREFIX}:*", count=500):
            client.delete(key)
    else:
        cache.clear()
    yield


@pytest.fixture
def make_user(db: Any) -> Any:
    def make(username: str = "alice", **extra: Any) -> Any:
        return get_user_model().objects.create_user(username, password="pw-" + username, **extra)

    return make


def session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class ChatSocket:
    """A websocket client speaking protocol v1 against the real ASGI app."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.frames: list[dict[str, Any]] = []

    async def send(self, kind: str, **fields: Any) -> None:
        await self.communicator.send_to(text_data=json.dumps({"type": kind, **fields}))

    async def receive(self, timeout: float = 5) -> dict[str, Any]:
        frame = json.loads(await self.communicator.receive_from(timeout))
        self.frames.append(frame)
        return frame

    async def receive_until(self, *kinds: str, timeout: float = 10) -> list[dict[str, Any]]:
        """Collect frames up to and including the first one of `kinds`."""
        collected = []
        while True:
            frame = await self.receive(timeout)
            collected.append(frame)
            if frame["type"] in kinds:
                return collected

    async def close(self) -> None:
        # A receive that timed out has already cancelled the app (asgiref does so);
        # disconnecting would raise its CancelledError, a BaseException, which stops
        # pytest from running the test's other teardowns (settings stay overridden).
        if not self.communicator.future.cancelled():
            await self.communicator.disconnect()


async def open_socket(
    user: Any = None, origin: str = "http://testserver", headers: list | None = None
) -> tuple[bool, Any]:
    from chatimg.asgi import application

    # A browser's handshake names the host it connects to; the origin check compares.
    headers = [(b"host", b"testserver"), *(headers or [])]
    if origin:
        headers.append((b"origin", origin.encode()))
    if user is not None:
        cookie = await sync_to_async(session_cookie)(user)
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    # The handshake's deadline: the communicator's default (1 s) was missed once on
    # a loaded two-core machine (the PostgreSQL + Redis run, S3 server beside it).
    connected, code = await communicator.connect(timeout=10)
    return connected, (ChatSocket(communicator) if connected else code)


@pytest.fixture
async def connect() -> Any:
    """Open an authenticated socket and read its session.ready frame."""
    sockets: list[ChatSocket] = []

    async def _connect(user: Any) -> ChatSocket:
        connected, socket = await open_socket(user)
        assert connected
        ready = await socket.receive()
        assert ready["type"] == "session.ready"
        sockets.append(socket)
        return socket

    yield _connect
    for socket in sockets:
        await socket.close()


def text_of(frames: list[dict[str, Any]], message_id: int) -> str:
    """Reassemble the streamed text of one message, honouring offsets."""
    text = ""
    for frame in frames:
        if frame["type"] == "assistant.delta" and frame["message_id"] == message_id:
            assert frame["offset"] <= len(text), "gap in the delta stream"
            text = text[: frame["offset"]] + frame["text"]
    return text


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port: real HTTP, real signatures."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # port=0: a taken port would make moto hang forever instead of failing.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: Any) -> Iterator[Any]:
    """SeaweedFS, a real S3 server, on free loopback ports (tests/s3servers.py)."""
    from tests.s3servers import WEED, SeaweedFS

    if not WEED.exists():
        pytest.skip(f"SeaweedFS's weed binary is not at {WEED}: `make install` puts it there")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server.start()
    finally:
        server.stop()


@dataclass(frozen=True)
class S3Endpoint:
    kind: str
    endpoint_url: str
    addressing_style: str  # "path" or "virtual"

    def object_url_prefix(self, bucket: str) -> str:
        """Where an object's URL starts, as the app's redirects must point."""
        if self.addressing_style == "virtual":
            scheme, host = self.endpoint_url.split("://", 1)
            return f"{scheme}://{bucket}.{host}/"
        return f"{self.endpoint_url}/{bucket}/"


S3_KINDS = ["moto", "seaweedfs", "seaweedfs-virtual-host"]


@pytest.fixture(scope="session", params=S3_KINDS)
def s3_endpoint(request: Any) -> S3Endpoint:
    """Each storage test runs on moto, on SeaweedFS, and on SeaweedFS with virtual hosts.

    Virtual-host addressing needs `<bucket>.localhost` to resolve to loopback, as
    RFC 6761 says and browsers do; this machine's resolver does not (no
    nss-myhostname), so `localhost_names` below does it in the test process
    instead of /etc/hosts.
    """
    if request.param == "moto":
        return S3Endpoint("moto", request.getfixturevalue("s3_server"), "path")
    server = request.getfixturevalue("seaweedfs")
    if request.param == "seaweedfs":
        return S3Endpoint("seaweedfs", f"http://127.0.0.1:{server.s3_port}", "path")
    return S3Endpoint("seaweedfs-virtual-host", f"http://localhost:{server.s3_port}", "virtual")


@pytest.fixture
def localhost_names(monkeypatch: Any) -> None:
    """Resolve `*.localhost` to 127.0.0.1 in this process (RFC 6761), as a browser does."""
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


S3_KEYS = {"access_key": "testing-access", "secret_key": "testing-secret"}


@pytest.fixture
def s3_bucket(s3_endpoint: S3Endpoint, settings: Any, request: Any) -> Iterator[Any]:
    """A private bucket on the S3 server, used as the app's default storage."""
    import boto3
    from botocore.config import Config

    if s3_endpoint.addressing_style == "virtual":
        request.getfixturevalue("localhost_names")
    name = f"chatimg-{uuid_hex()}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEYS["access_key"],
        aws_secret_access_key=S3_KEYS["secret_key"],
        config=Config(s3={"addressing_style": s3_endpoint.addressing_style}),
    )
    client.create_bucket(Bucket=name)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": name,
                "endpoint_url": s3_endpoint.endpoint_url,
                "region_name": "us-east-1",
                "addressing_style": s3_endpoint.addressing_style,
                "signature_version": "s3v4",
                "querystring_auth": True,
                "querystring_expire": settings.S3_PRESIGN_SECONDS,
                "default_acl": None,
                "file_overwrite": False,
                **S3_KEYS,
            },
        },
    }
    client.bucket_name = name
    client.object_url_prefix = s3_endpoint.object_url_prefix(name)
    client.s3_kind = s3_endpoint.kind
    yield client
    # Empty and drop the bucket: SeaweedFS keeps a volume per bucket otherwise.
    for key in bucket_keys(client):
        client.delete_object(Bucket=name, Key=key)
    client.delete_bucket(Bucket=name)


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


def bucket_keys(client: Any) -> list[str]:
    listing = client.list_objects_v2(Bucket=client.bucket_name)
    return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture
async def close_model_clients() -> AsyncIterator[None]:
    """Close the model clients a test's event loop opened (each loop has its own)."""
    yield
    from conversations import llm

    await llm.close_clients()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # For the async tests only: an async fixture would give every sync test an
    # event loop of its own too.
    for item in items:
        function = getattr(item, "function", None)
        if inspect.iscoroutinefunction(function):
            item.fixturenames.append("close_model_clients")  # type: ignore[attr-defined]


@pytest.fixture(scope="session", autouse=True)
def close_orm_thread_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Close the connection that the async tests' ORM thread opened.

    Otherwise PostgreSQL refuses to drop the test database at the end
    ("being accessed by other users").
    """
    yield
    import asyncio

    from channels.db import database_sync_to_async
    from django.db import connections

    from conversations import dbpool

    # From a fresh loop with no sync caller, this runs on that same ORM thread.
    with django_db_blocker.unblock():
        asyncio.run(database_sync_to_async(connections.close_all)())
        dbpool.close()  # and every thread of the turn-start pool closes its own
