"""The floor of the required parts: CPU per token with nothing of chatimg's own.

    .venv/bin/python -m bench.floor --streams 100 --tokens 500

How far can CPU per delivered token go down while the required packages carry
it? Three parts, each measured alone, with none of the app's work in between:

- **upstream**: this process reads N streamed chat completions from the bench
  fake (its own process; one SSE chunk per token, 50 tokens/s, as a model
  server sends them) and does nothing with them. Modes:
  ``sdk`` the app's own request and read (the openai SDK's `post` with its
  aiohttp transport, `aiter_bytes`); ``sdk-parse`` the same plus the app's
  reader (`llm.read_stream`: SSE split, `json.loads`, events); ``aiohttp``
  aiohttp alone, no SDK; ``protocol`` a bare asyncio Protocol that counts
  bytes (Python's own floor for a segment per token).
- **request**: N streamed chat requests at once through the SDK, as the app
  makes them (`post`, the aiohttp transport), each closed at its headers: the
  CPU of asking the model, per request, before any token. N of them in one
  process take N times that before the last one leaves.
- **downstream**: a daphne process (the required server) runs a Channels
  consumer that sends N sockets one frame per tick, shaped like an
  ``assistant.delta``; clients in this process read them. Modes: ``send``
  (a frame per tick) and ``tick`` (the same wake-ups, no frame): their
  difference is what one websocket frame costs through channels, daphne and
  autobahn.

The figure is process CPU (utime + stime) over the streaming, per token or
per frame. docs/benchmarks.md adds them up against the 50 µs target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, free_port, marker, wait_port
from bench.stack import Stack

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# One client per base URL for a whole run, as the app keeps one per event loop.
_sdk_clients: dict[str, Any] = {}
_sessions: dict[str, Any] = {}


def _body(tokens: int, delay: float, index: int) -> dict[str, object]:
    return {
        "model": "bench",
        "stream": True,
        "messages": [{"role": "user", "content": marker(tokens, delay, f"floor-{index}")}],
    }


# --- upstream ----------------------------------------------------------------------


async def _read_sdk(base_url: str, body: dict[str, object], parse: bool) -> int:
    import httpx2
    import openai

    from conversations import llm

    client = _sdk_clients.get(base_url)
    if client is None:
        client = _sdk_clients[base_url] = openai.AsyncOpenAI(
            base_url=base_url, api_key="bench", http_client=openai.DefaultAioHttpClient()
        )
    response = await client.post(
        "/chat/completions", cast_to=httpx2.Response, body=body, stream=True
    )
    reads = 0
    try:
        if parse:
            async for _event in llm.read_stream(response.aiter_bytes()):
                reads += 1
        else:
            async for _chunk in response.aiter_bytes():
                reads += 1
    finally:
        await response.aclose()
    return reads


async def _read_aiohttp(base_url: str, body: dict[str, object]) -> int:
    import aiohttp

    session = _sessions.get(base_url)
    if session is None:
        session = _sessions[base_url] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0)
        )
    reads = 0
    async with session.post(f"{base_url}/chat/completions", json=body) as response:
        async for _chunk in response.content.iter_any():
            reads += 1
    return reads


async def _read_protocol(base_url: str, body: dict[str, object]) -> int:
    host, port = base_url.split("//")[1].split("/")[0].split(":")
    payload = json.dumps(body).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + payload
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    class Counter(asyncio.Protocol):
        reads = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(request)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.reads += 1

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_result(self.reads)

    await loop.create_connection(Counter, host, int(port))
    return await done


async def upstream(
    base_url: str, mode: str, streams: int, tokens: int, delay: float
) -> dict[str, Any]:
    async def one(index: int) -> int:
        body = _body(tokens, delay, index)
        if mode == "protocol":
            return await _read_protocol(base_url, body)
        if mode == "aiohttp":
            return await _read_aiohttp(base_url, body)
        return await _read_sdk(base_url, body, parse=mode == "sdk-parse")

    await asyncio.gather(*(one(-1 - i) for i in range(min(streams, 10))))  # warm up
    cpu, wall = time.process_time(), time.perf_counter()
    reads = await asyncio.gather(*(one(i) for i in range(streams)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    for opened in [*_sdk_clients.values(), *_sessions.values()]:
        await opened.close()
    _sdk_clients.clear()
    _sessions.clear()
    return {
        "half": "upstream",
        "mode": mode,
        "streams": streams,
        "tokens": streams * tokens,
        "reads_per_token": round(sum(reads) / (streams * tokens), 2),
        "cpu_us_per_token": round(1e6 * cpu / (streams * tokens), 1),
        "wall_s": round(wall, 1),
    }


async def requests(base_url: str, count: int) -> dict[str, Any]:
    """N streamed chat requests at once through the SDK, each closed at its headers:
    the CPU that asking the model costs before any token, per request."""
    import httpx2
    import openai

    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="bench", http_client=openai.DefaultAioHttpClient()
    )

    async def one(index: int) -> None:
        body = _body(1, 0.0, index)
        response = await client.post(
            "/chat/completions", cast_to=httpx2.Response, body=body, stream=True
        )
        await response.aclose()

    await asyncio.gather(*(one(-1 - i) for i in range(min(count, 10))))  # warm up
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await client.close()
    return {
        "half": "request",
        "mode": "sdk",
        "at_once": count,
        "cpu_ms_per_request": round(1e3 * cpu / count, 2),
        "wall_ms_all": round(1e3 * wall, 1),
    }


# --- downstream --------------------------------------------------------------------


async def downstream(mode: str, streams: int, frames: int, delay: float) -> dict[str, Any]:
    import websockets

    port = free_port()
    env = {**os.environ, "FLOOR_FRAMES": str(frames), "FLOOR_DELAY": str(delay)}
    env["FLOOR_MODE"] = mode
    server = subprocess.Popen(
        [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "bench.floor_asgi:app"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_port, port)
        sockets = [
            await websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None)
            for _ in range(streams)
        ]
        expected = frames if mode == "send" else 0

        async def one(ws: websockets.ClientConnection) -> int:
            await ws.send("go")
            got = 0
            while True:
                message = await asyncio.wait_for(ws.recv(), timeout=60)
                if message == "end":
                    return got
                got += 1

        cpu = cpu_seconds(server.pid)
        wall = time.perf_counter()
        received = await asyncio.gather(*(one(ws) for ws in sockets))
        cpu, wall = cpu_seconds(server.pid) - cpu, time.perf_counter() - wall
        for ws in sockets:
            await ws.close()
        if any(got != expected for got in received):
            raise RuntimeError(f"frames lost: expected {expected} each, got {set(received)}")
        return {
            "half": "downstream",
            "mode": mode,
            "streams": streams,
            "ticks": streams * frames,
            "cpu_us_per_tick": round(1e6 * cpu / (streams * frames), 1),
            "wall_s": round(wall, 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=500, help="tokens (frames) per stream")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument("--upstream", default="protocol,aiohttp,sdk,sdk-parse")
    parser.add_argument("--downstream", default="tick,send")
    parser.add_argument("--requests", default="50,200", help="requests at once (request half)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatimg.settings")
    import django

    django.setup()

    with Stack() as stack:  # the embedded defaults: only the fake is started
        stack.start_fake(args.delay)
        base_url = stack.fake_url
        runs: list[Callable[[], Awaitable[dict[str, Any]]]] = []
        for _ in range(args.rounds):
            for mode in filter(None, args.upstream.split(",")):
                runs.append(
                    lambda m=mode: upstream(base_url, m, args.streams, args.tokens, args.delay)
                )
            for count in filter(None, args.requests.split(",")):
                runs.append(lambda n=int(count): requests(base_url, n))
            for mode in filter(None, args.downstream.split(",")):
                runs.append(lambda m=mode: downstream(m, args.streams, args.tokens, args.delay))

        async def all_runs() -> None:
            for run in runs:
                row = await run()
                row["load_average_1m"] = round(os.getloadavg()[0], 2)
                print(json.dumps(row), flush=True)

        asyncio.run(all_runs())


if __name__ == "__main__":
    main()
