"""chatimg through a real LiteLLM proxy, over the real socket (the live gateway tier).

LiteLLM's proxy (installed into .venv-litellm/ by scripts/install_test_servers,
its own venv because it pins its own dependencies) is started on a free
loopback port in front of the project's fake, configured as a user following
LiteLLM's docs would: `model: openai/<name>` with `api_base`, the image models
with `mode: image_generation`, and no `drop_params`, so chatimg's default
image request has to be one the gateway accepts. Chat and images both go
through it. The proxy is stopped by the fixture that started it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async

from conversations.models import GeneratedImage, Message
from offline_model import OfflineModelServer, Reply
from tests.conftest import text_of
from tests.servers import free_port, stop
from tests.waiting import within

REPO = Path(__file__).resolve().parents[1]
LITELLM = REPO / ".venv-litellm" / "bin" / "litellm"
IMAGE_MODELS = ("offline-image", "gpt-image-1", "dall-e-2")

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class Gateway:
    url: str  # the OpenAI-compatible base URL, …/v1
    key: str
    log: Path


def _config(upstream: str, key: str) -> str:
    models = [("gpt-test", None), *((name, "image_generation") for name in IMAGE_MODELS)]
    lines = ["model_list:"]
    for name, mode in models:
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: openai/{name}",
            f"      api_base: {upstream}",
            "      api_key: sk-upstream",
        ]
        if mode:
            lines += ["    model_info:", f"      mode: {mode}"]
    lines += ["general_settings:", f"  master_key: {key}"]
    return "\n".join(lines) + "\n"


def _alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/liveliness", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def litellm_gateway(openai_server: OfflineModelServer, tmp_path_factory: Any) -> Iterator[Gateway]:
    if not LITELLM.exists():
        pytest.skip(
            f"LiteLLM's proxy is not installed at {LITELLM.relative_to(REPO)}: "
            "run scripts/install_test_servers (make test does)"
        )
    tmp = tmp_path_factory.mktemp("litellm")
    key = f"sk-{secrets.token_hex(16)}"
    config = tmp / "config.yaml"
    config.write_text(_config(openai_server.base_url, key))
    log = tmp / "litellm.log"
    env = {
        # LiteLLM reads DATABASE_URL (and wants prisma for it) and REDIS_* from the
        # environment: the app's settings, as in the PostgreSQL run, are not its own.
        **{
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "REDIS_URL", "DIRECT_URL")
            and not key.startswith(("LITELLM_", "REDIS_", "OPENAI_", "AZURE_"))
        },
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start
        "LITELLM_TELEMETRY": "False",
    }
    process = None
    try:
        for _attempt in range(3):  # a port taken between free_port() and the bind: retry
            port = free_port()
            argv = [str(LITELLM), "--config", str(config), "--host", "127.0.0.1"]
            with log.open("ab") as out:
                process = subprocess.Popen(
                    [*argv, "--port", str(port)],
                    cwd=tmp,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            base = f"http://127.0.0.1:{port}"
            # LiteLLM imports a lot: ~10-30 s here. Stop waiting if it exits.
            within(lambda p=process, b=base: p.poll() is not None or _alive(b), 180, interval=0.25)
            if process.poll() is None and _alive(base):
                yield Gateway(f"{base}/v1", key, log)
                return
            stop(process)
        tail = log.read_text(errors="replace")[-3000:]
        pytest.fail(f"LiteLLM's proxy did not start:\n{tail}")
    finally:
        if process is not None:
            stop(process)


@pytest.fixture
def gateway(litellm_gateway: Gateway, fake_openai: OfflineModelServer, settings: Any) -> Gateway:
    """The app talks to LiteLLM for chat and images; LiteLLM talks to the fake."""
    settings.OPENAI_BASE_URL = settings.OPENAI_IMAGE_BASE_URL = litellm_gateway.url
    settings.OPENAI_API_KEY = settings.OPENAI_IMAGE_API_KEY = litellm_gateway.key
    settings.CHAT_MODEL = "gpt-test"
    settings.IMAGE_MODEL = "offline-image"
    settings.IMAGE_SIZE = "256x256"
    settings.LLM_TIMEOUT_SECONDS = 60
    return litellm_gateway


async def turn(socket: Any, text: str, conversation_id: str | None = None) -> list[dict]:
    await socket.send(
        "message.send",
        conversation_id=conversation_id,
        client_message_id=secrets.token_hex(4),
        text=text,
    )
    return await socket.receive_until("assistant.completed", "assistant.failed", timeout=60)


async def test_a_text_answer_streams_through_the_gateway(
    gateway: Gateway, fake_openai: OfflineModelServer, connect: Any, make_user: Any
) -> None:
    fake_openai.script_chat(Reply(text="Hello from behind the gateway, nice to meet you."))
    socket = await connect(await database_sync_to_async(make_user)())
    frames = await turn(socket, "Hi!")
    assert frames[-1]["type"] == "assistant.completed", frames[-1]
    answer = await Message.objects.aget(pk=frames[-1]["message_id"])
    assert answer.text == "Hello from behind the gateway, nice to meet you."
    assert text_of(socket.frames, answer.pk) == answer.text
    assert answer.status == Message.Status.COMPLETE
    (request,) = fake_openai.chat_requests()  # it reached the fake through LiteLLM
    assert request.headers["authorization"] == "Bearer sk-upstream"
    assert request.body["messages"][-1]["content"] == "Hi!"


@pytest.mark.parametrize("image_model", IMAGE_MODELS)
async def test_a_tool_call_stores_an_image_generated_through_the_gateway(
    gateway: Gateway,
    fake_openai: OfflineModelServer,
    connect: Any,
    make_user: Any,
    settings: Any,
    local_storage: Path,
    image_model: str,
) -> None:
    settings.IMAGE_MODEL = image_model
    socket = await connect(await database_sync_to_async(make_user)())
    frames = await turn(socket, "draw a lighthouse at dusk")

    failures = [f for f in frames if f["type"] == "tool.failed"]
    assert failures == [], failures
    assert frames[-1]["type"] == "assistant.completed", frames[-1]
    done = next(f for f in frames if f["type"] == "tool.completed")
    image = await GeneratedImage.objects.select_related("tool_invocation").aget(
        pk=done["image"]["id"]
    )
    assert image.prompt == "a lighthouse at dusk"
    assert (image.width, image.height) == (256, 256)
    assert (local_storage / image.file.name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (image_request,) = fake_openai.image_requests()  # through LiteLLM, not around it
    assert image_request.headers["authorization"] == "Bearer sk-upstream"
    assert image_request.body["prompt"] == "a lighthouse at dusk"
    answer = await Message.objects.aget(pk=frames[-1]["message_id"])
    # The follow-up text, after the image, came through the gateway too.
    assert "a lighthouse at dusk" in answer.text[image.tool_invocation.text_offset :]


async def test_the_conversation_goes_on_after_a_tool_round_through_the_gateway(
    gateway: Gateway, fake_openai: OfflineModelServer, connect: Any, make_user: Any
) -> None:
    socket = await connect(await database_sync_to_async(make_user)())
    first = await turn(socket, "draw a lighthouse at dusk")
    assert first[-1]["type"] == "assistant.completed", first[-1]
    fake_openai.script_chat(Reply(text="You're welcome! Anything else to draw?"))
    second = await turn(socket, "thanks!", first[-1]["conversation_id"])

    assert second[-1]["type"] == "assistant.completed", second[-1]
    answer = await Message.objects.aget(pk=second[-1]["message_id"])
    assert answer.text == "You're welcome! Anything else to draw?"
    # The history that reached the fake through LiteLLM carries the tool round.
    last = fake_openai.chat_requests()[-1].body["messages"]
    assistant = next(m for m in last if m.get("tool_calls"))
    assert assistant["tool_calls"][0]["function"]["name"] == "generate_image"
    tool = next(m for m in last if m["role"] == "tool")
    assert json.loads(tool["content"])["status"] == "ok"
    assert last[-1] == {"role": "user", "content": "thanks!"}
