"""kill -9 mid-answer: how long until the answer is closed, and how much text is kept.

``--config postgres-redis``: two daphne processes on PostgreSQL + Redis. A
writer on process 1 and a follower on process 2 watch an answer of process 1
stream (50 tokens/s); about 2 s in, process 1 gets SIGKILL. Measured: the kill
→ the follower's ``assistant.failed`` (the lease lapses, a sweep closes it);
the stored text against the most either client had seen; the kill → a new
message in that conversation answered by process 2.

``--config sqlite-memory``: one daphne process, the embedded stack. The same
kill, then a restart as ``make run`` does it (``recover_turns``, then the
server). Measured: the restart's start → that conversation answering a new
message; the stored text against what the client had seen.

Real processes, real signals, default settings (leases, sweeps, drain).
Usage: ``.venv/bin/python -m bench.crash --config postgres-redis --runs 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection

from bench.common import marker, percentile
from bench.load import open_socket
from bench.stack import PYTHON, REPO, Stack

TOKENS = 600  # 12 s at 50 tokens/s: still streaming when the kill comes
SEEN_BEFORE_KILL = 400  # characters (about 2 s of this reply)


class Watcher:
    """One socket's view of one answer: its text by offset and its end."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.answer: int | None = None
        self.text = ""
        self.end: dict[str, Any] | None = None

    async def read_until(self, done: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                event = json.loads(await self.ws.recv())
                kind = event.get("type")
                if kind == "message.accepted":
                    self.answer = event["assistant_message_id"]
                elif kind == "conversation.state":
                    self.answer = event.get("message_id") or self.answer
                elif kind == "assistant.delta" and event.get("message_id") == self.answer:
                    if event["offset"] == len(self.text):
                        self.text += event["text"]
                elif kind in ("assistant.failed", "assistant.completed") and (
                    event.get("message_id") == self.answer
                ):
                    self.end = event


def _send(conversation_id: str | None, text: str) -> str:
    return json.dumps(
        {
            "type": "message.send",
            "conversation_id": conversation_id,
            "client_message_id": uuid.uuid4().hex,
            "text": text,
        }
    )


async def _answered(ws: ClientConnection, conversation_id: str, timeout: float = 60) -> None:
    """Send a short message into the conversation; return once it is answered."""
    await ws.send(_send(conversation_id, marker(5, 0.0, uuid.uuid4().hex[:8])))
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            if event.get("type") == "assistant.completed":
                return
            if event.get("type") == "error" and event.get("code") == "turn_in_progress":
                await asyncio.sleep(0.05)  # not closed yet: ask again
                await ws.send(_send(conversation_id, marker(5, 0.0, uuid.uuid4().hex[:8])))


def _lost(seen: str, stored: str) -> int:
    """Characters the user saw that the stored text does not start with."""
    kept = 0
    for a, b in zip(seen, stored, strict=False):
        if a != b:
            break
        kept += 1
    return len(seen) - kept


def _stored(stack: Stack, message_id: int) -> tuple[str, str]:
    sql = "SELECT status, text FROM conversations_message WHERE id = %s"
    if stack.db == "postgres":
        import psycopg

        url = f"postgresql://postgres@127.0.0.1:5432/{stack.pg_db}"
        with psycopg.connect(url) as conn:
            row = conn.execute(sql, (message_id,)).fetchone()
    else:
        with sqlite3.connect(stack.workdir / "db.sqlite3") as conn:
            row = conn.execute(sql.replace("%s", "?"), (message_id,)).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


async def _start_answer(writer: Watcher) -> str:
    await writer.ws.send(_send(None, marker(TOKENS, 0.02, uuid.uuid4().hex[:8])))
    accepted: dict[str, Any] = {}
    async with asyncio.timeout(30):
        while not accepted:
            event = json.loads(await writer.ws.recv())
            if event.get("type") == "message.accepted":
                accepted = event
    writer.answer = accepted["assistant_message_id"]
    return str(accepted["conversation_id"])


async def one_run_two_processes(stack: Stack) -> dict[str, float]:
    stack.start_app(processes=2)
    token = stack.tokens[0]
    writer = Watcher(await open_socket(stack.ws_urls[0], token))
    follower = Watcher(await open_socket(stack.ws_urls[1], token))
    conversation = await _start_answer(writer)
    await follower.ws.send(
        json.dumps({"type": "conversation.subscribe", "conversation_id": conversation})
    )
    await follower.read_until(lambda: len(follower.text) >= SEEN_BEFORE_KILL, 30)
    os.kill(stack.app_pids[0], signal.SIGKILL)
    killed = time.monotonic()
    await writer.ws.close()
    await follower.read_until(lambda: follower.end is not None, 60)
    closed = time.monotonic() - killed
    await _answered(follower.ws, conversation)
    usable = time.monotonic() - killed
    await follower.ws.close()
    assert follower.answer is not None and follower.end is not None
    status, text = _stored(stack, follower.answer)
    seen = max(writer.text, follower.text, key=len)
    return {
        "closed_s": closed,
        "usable_s": usable,
        "seen_chars": len(seen),
        "stored_chars": len(text),
        "lost_chars": _lost(seen, text),
        "interrupted": float(status == "interrupted"),
    }


async def one_run_embedded(stack: Stack) -> dict[str, float]:
    stack.start_app(processes=1)
    token = stack.tokens[0]
    writer = Watcher(await open_socket(stack.ws_url, token))
    conversation = await _start_answer(writer)
    await writer.read_until(lambda: len(writer.text) >= SEEN_BEFORE_KILL, 30)
    os.kill(stack.app_pids[0], signal.SIGKILL)
    stack.apps[0].wait(10)
    await writer.ws.close()
    restarted = time.monotonic()
    subprocess.run(
        [PYTHON, "manage.py", "recover_turns"], cwd=REPO, env=stack.env(), check=True, timeout=60
    )
    stack.start_app(processes=1)
    ws = await open_socket(stack.ws_url, token)
    await _answered(ws, conversation)
    usable = time.monotonic() - restarted
    await ws.close()
    assert writer.answer is not None
    status, text = _stored(stack, writer.answer)
    return {
        "restart_to_answered_s": usable,
        "seen_chars": len(writer.text),
        "stored_chars": len(text),
        "lost_chars": _lost(writer.text, text),
        "interrupted": float(status == "interrupted"),
    }


async def main_async(args: argparse.Namespace) -> None:
    postgres = args.config == "postgres-redis"
    stack = Stack(
        db="postgres" if postgres else "sqlite",
        layer="redis" if postgres else "memory",
        pg_db=args.pg_db,
        redis_url=args.redis_url,
    )
    with stack:
        stack.start_fake(token_delay=0.02)
        stack.prepare_db(users=1)
        runs = []
        for number in range(args.runs):
            run = one_run_two_processes if postgres else one_run_embedded
            result = await run(stack)
            runs.append(result)
            print(f"run {number + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))
        print(f"\n{stack.label()}, {args.runs} runs, load {os.getloadavg()[0]:.2f}")
        for key in runs[0]:
            values = [run[key] for run in runs]
            print(
                f"{key:>24}: min {min(values):.2f}  p50 {percentile(values, 50):.2f}"
                f"  max {max(values):.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=["postgres-redis", "sqlite-memory"], required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pg-db", default="chatimg_benchcrash")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
