"""The load client: asyncio + websockets, speaking protocol v1 to one daphne process.

Every stream authenticates with a bearer token, waits for ``session.ready``,
sends ``message.send`` whose text asks the bench fake for an exact reply, and
records the receive time (``time.time()``) of every frame. Text is reassembled
by offset and compared with the expected reply character for character.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench.common import (
    MARKER_RE,
    image_marker,
    marker,
    percentile,
    reply_text,
    token_ends,
    token_of_char,
)

_ids = itertools.count()


@dataclass
class TurnResult:
    bench_id: str
    tokens: int
    delay: float
    t_send: float = 0.0
    t_accepted: float | None = None
    t_end: float | None = None
    # A generate_image turn (bench.common.image_marker): its text is the offline
    # model's, not a bench reply; what counts is the tool.completed frame.
    image: bool = False
    t_tool_completed: float | None = None
    tool_error: str | None = None
    # A follower's copy of someone else's turn (conversation.subscribe), not a send.
    follower: bool = False
    assistant_message_id: int | None = None
    # (receive time, offset, length) of every assistant.delta, in arrival order.
    deltas: list[tuple[float, int, int]] = field(default_factory=list)
    text: str = ""
    status: str | None = None
    text_length: int | None = None
    conversation_id: str | None = None
    # Frame types seen after the end (with `linger`), e.g. conversation.updated.
    after: list[str] = field(default_factory=list)
    anomalies: Counter[str] = field(default_factory=Counter)
    error: str | None = None

    @property
    def exact(self) -> bool:
        if self.image:
            return (
                self.status == "complete"
                and self.t_tool_completed is not None
                and self.text_length == len(self.text)
                and not self.anomalies
            )
        return (
            self.status == "complete"
            and self.text == reply_text(self.tokens)
            and self.text_length == len(self.text)
            and not self.anomalies
        )


async def open_socket(url: str, token: str, timeout: float = 60.0) -> ClientConnection:
    ws = await connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        proxy=None,
        open_timeout=timeout,
        ping_interval=None,
        max_size=2**24,
        max_queue=1024,
        close_timeout=2,
    )
    async with asyncio.timeout(timeout):
        ready = json.loads(await ws.recv())
    if ready.get("type") != "session.ready":
        await ws.close()
        raise RuntimeError(f"expected session.ready, got {ready}")
    return ws


async def run_turn(
    ws: ClientConnection,
    tokens: int,
    delay: float,
    timeout: float = 300.0,
    conversation_id: str | None = None,
    linger: float = 0.0,
    ttft: float | None = None,
    image: bool = False,
    gate: asyncio.Event | None = None,
) -> TurnResult:
    """One turn; `conversation_id` None starts a conversation. `linger` keeps reading
    frames that long after the end (a new conversation's title arrives then).

    `ttft`: the fake waits that long before the first token (the upstream's own
    TTFT). `image`: ask for one generate_image call instead of a text reply.
    `gate`: wait for it before sending (a flash crowd: every socket is connected and
    ready, and all send in the same turn of the event loop).
    """
    bench_id = f"{uuid.uuid4().hex[:12]}-{next(_ids)}"
    result = TurnResult(bench_id, tokens, delay, image=image)
    frame = json.dumps(
        {
            "type": "message.send",
            "conversation_id": conversation_id,
            "client_message_id": bench_id,
            "text": image_marker(bench_id) if image else marker(tokens, delay, bench_id, ttft),
        }
    )
    if gate is not None:
        await gate.wait()
    try:
        async with asyncio.timeout(timeout):
            result.t_send = time.time()
            await ws.send(frame)
            await _read_turn(ws, result, None)
        if linger > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(linger):
                    while True:
                        result.after.append(json.loads(await ws.recv()).get("type"))
    except TimeoutError:
        result.error = "timeout"
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def _read_turn(ws: ClientConnection, result: TurnResult, skip: int | None) -> None:
    """Read one turn's frames into `result`, up to its final frame.

    A follower (`result.follower`) takes the first answer other than `skip` (the
    conversation's previous one) and learns the bench id from `message.created`.
    """
    pieces: list[str] = []
    have = 0
    try:
        while True:
            raw = await ws.recv()
            now = time.time()
            event = json.loads(raw)
            kind = event.get("type")
            if result.follower:
                if kind == "message.created":
                    found = MARKER_RE.match(event.get("text", ""))
                    if found:
                        result.bench_id = found["id"]
                        result.tokens = int(found["tokens"])
                        result.delay = float(found["delay"])
                    continue
                message_id = event.get("message_id")
                if message_id is None or message_id == skip:
                    continue
                result.assistant_message_id = message_id
            if kind == "assistant.delta":
                offset, text = event["offset"], event["text"]
                result.deltas.append((now, offset, len(text)))
                end = offset + len(text)
                if offset == have:
                    pieces.append(text)
                    have = end
                elif end <= have:
                    result.anomalies["duplicate"] += 1
                elif offset > have:
                    result.anomalies["gap"] += 1  # characters lost on the way
                else:
                    result.anomalies["overlap"] += 1
                    pieces.append(text[have - offset :])
                    have = end
            elif kind == "message.accepted":
                result.t_accepted = now
                result.conversation_id = event.get("conversation_id")
                result.assistant_message_id = event.get("assistant_message_id")
            elif kind == "tool.completed":
                result.t_tool_completed = now
            elif kind == "tool.failed":
                result.tool_error = str(event.get("error"))
            elif kind in ("assistant.completed", "assistant.failed"):
                result.t_end = now
                result.status = event.get("status") or event.get("code")
                result.text_length = event.get("text_length")
                break
            elif kind == "error":
                result.error = f"{event.get('code')}: {event.get('message')}"
                break
    finally:
        result.text = "".join(pieces)


async def subscribe(ws: ClientConnection, conversation_id: str, timeout: float = 60.0) -> int:
    """Follow a conversation whose latest answer has finished; returns that answer's id
    once the catch-up (state, text, final frame) has been read."""
    await ws.send(
        json.dumps({"type": "conversation.subscribe", "conversation_id": conversation_id})
    )
    async with asyncio.timeout(timeout):
        latest = None
        while True:
            event = json.loads(await ws.recv())
            kind = event.get("type")
            if kind == "conversation.state":
                latest = event.get("message_id")
            elif kind in ("assistant.completed", "assistant.failed") and latest is not None:
                return int(latest)
            elif kind == "error":
                raise RuntimeError(f"subscribe refused: {event}")


async def follow_turn(ws: ClientConnection, skip: int, timeout: float = 300.0) -> TurnResult:
    """A follower's view of the conversation's next answer (after `skip`)."""
    result = TurnResult("", 0, 0.0, follower=True)
    try:
        async with asyncio.timeout(timeout):
            await _read_turn(ws, result, skip)
    except TimeoutError:
        result.error = "timeout"
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


class LoopLag:
    """How late this client's own event loop wakes up (is the client the bottleneck?)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.lags.append(loop.time() - start - self.interval)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()

    def p99_ms(self) -> float:
        return 1000 * percentile(self.lags, 99)


async def open_many(
    url: str | list[str],
    tokens: list[str],
    count: int,
    parallel: int = 50,
    token_index: Any = None,
    url_index: Any = None,
) -> list[ClientConnection]:
    """`count` authenticated sockets; socket i on urls[url_index(i)] (default i % len),
    as user tokens[token_index(i)] (default i % len)."""
    gate = asyncio.Semaphore(parallel)
    urls = [url] if isinstance(url, str) else url
    pick_token = token_index or (lambda i: i % len(tokens))
    pick_url = url_index or (lambda i: i % len(urls))

    async def one(i: int) -> ClientConnection:
        async with gate:
            return await open_socket(urls[pick_url(i) % len(urls)], tokens[pick_token(i)])

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def alive(sockets: list[ClientConnection], timeout: float = 10.0) -> int:
    """How many sockets still answer a ping frame of the protocol with its pong."""

    async def one(index: int, ws: ClientConnection) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await ws.send(json.dumps({"type": "ping", "id": index}))
                while True:
                    event = json.loads(await ws.recv())
                    if event.get("type") == "pong" and event.get("id") == index:
                        return True
        except Exception:
            return False

    return sum(await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets))))


async def close_many(sockets: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


# --- analysis -----------------------------------------------------------------------


def analyse(
    results: list[TurnResult], stamps: dict[str, Any], steady_from: float | None = None
) -> dict[str, Any]:
    """Added latencies against the fake's own send times, and text integrity.

    `steady_from` (wall time): also report the deltas received after it, i.e. once
    every stream has started, without the burst of turn starts.
    """
    ttft, latency, added_gap, start, lateness = [], [], [], [], []
    steady, steady_gap = [], []
    # From the client's send: send -> first text minus the upstream's own TTFT,
    # send -> message.accepted; and per token (not per delta), senders and followers.
    e2e_ttft, accepted, upstream_ttft = [], [], []
    per_token, per_token_follower, follower_first = [], [], []
    tokens_delivered = 0
    # Latency by second since the first send: where in the run the slow deltas are.
    t_first = min((r.t_send for r in results if r.t_send), default=0.0)
    by_second: dict[int, list[float]] = {}
    anomalies: Counter[str] = Counter()
    exact = failed = missing_stamps = 0
    lost_chars = 0
    frames = 0
    for r in results:
        anomalies.update(r.anomalies)
        expected = reply_text(r.tokens)
        if r.exact:
            exact += 1
        else:
            failed += 1
            lost_chars += max(0, len(expected) - len(r.text)) if r.text != expected else 0
            if r.text != expected and len(r.text) == len(expected):
                anomalies["wrong_text"] += 1
        if r.t_accepted is not None and not r.follower:
            accepted.append(r.t_accepted - r.t_send)
        stamp = stamps.get(r.bench_id)
        if stamp is None or not stamp["times"]:
            missing_stamps += 1
            continue
        times = stamp["times"]
        tokens_delivered += _token_delays(r, times, per_token_follower if r.follower else per_token)
        if r.follower:
            # When the follower's first text came, against the sender's send (not
            # known here): against the upstream's first token instead.
            if r.deltas:
                follower_first.append(r.deltas[0][0] - times[0])
            continue
        upstream_ttft.append(times[0] - stamp["arrived"])
        if r.deltas:
            e2e_ttft.append((r.deltas[0][0] - r.t_send) - (times[0] - stamp["arrived"]))
        start.append(stamp["arrived"] - r.t_send)
        if r.delay > 0:
            t0 = times[0]
            lateness.extend(t - (t0 + i * r.delay) for i, t in enumerate(times))
        if not r.deltas:
            continue
        frames += len(r.deltas)
        ttft.append(r.deltas[0][0] - times[0])
        previous = None
        for t_recv, offset, length in r.deltas:
            if length == 0:
                continue
            last = token_of_char(r.tokens, offset + length - 1)
            if last >= len(times):
                continue
            sent = times[last]
            latency.append(t_recv - sent)
            by_second.setdefault(int(t_recv - t_first), []).append(t_recv - sent)
            is_steady = steady_from is not None and t_recv >= steady_from
            if is_steady:
                steady.append(t_recv - sent)
            if previous is not None:
                added_gap.append((t_recv - previous[0]) - (sent - previous[1]))
                if is_steady:
                    steady_gap.append(added_gap[-1])
            previous = (t_recv, sent)

    def ms(values: list[float], q: float) -> float:
        return round(1000 * percentile(values, q), 2)

    return {
        "turns": len(results),
        "exact": exact,
        "failed": failed,
        "errors": Counter(r.error or r.status for r in results if not r.exact),
        "anomalies": dict(anomalies),
        "lost_chars": lost_chars,
        "missing_stamps": missing_stamps,
        "frames": frames,
        "ttft_p50_ms": ms(ttft, 50),
        "ttft_p99_ms": ms(ttft, 99),
        "ttft_max_ms": ms(ttft, 100),
        "delta_p50_ms": ms(latency, 50),
        "delta_p99_ms": ms(latency, 99),
        "delta_max_ms": ms(latency, 100),
        "gap_p99_ms": ms(added_gap, 99),
        "steady_delta_p50_ms": ms(steady, 50),
        "steady_delta_p99_ms": ms(steady, 99),
        "steady_delta_max_ms": ms(steady, 100),
        "steady_gap_p99_ms": ms(steady_gap, 99),
        "samples_steady": len(steady),
        "start_p50_ms": ms(start, 50),
        "start_p99_ms": ms(start, 99),
        "fake_late_p99_ms": ms(lateness, 99),
        "samples_ttft": len(ttft),
        "samples_delta": len(latency),
        "timeline_p99_ms": {s: ms(v, 99) for s, v in sorted(by_second.items())},
        "timeline_start": int(t_first),
        "first_send_epoch": round(t_first, 4),
        "e2e_ttft_p50_ms": ms(e2e_ttft, 50),
        "e2e_ttft_p99_ms": ms(e2e_ttft, 99),
        "e2e_ttft_max_ms": ms(e2e_ttft, 100),
        "accepted_p50_ms": ms(accepted, 50),
        "accepted_p99_ms": ms(accepted, 99),
        "upstream_ttft_p50_ms": ms(upstream_ttft, 50),
        "token_p50_ms": ms(per_token, 50),
        "token_p99_ms": ms(per_token, 99),
        "token_max_ms": ms(per_token, 100),
        "follower_token_p50_ms": ms(per_token_follower, 50),
        "follower_token_p99_ms": ms(per_token_follower, 99),
        "follower_first_p99_ms": ms(follower_first, 99),
        "tokens_delivered": tokens_delivered,
        "followers": sum(1 for r in results if r.follower),
    }


def _token_delays(r: TurnResult, times: list[float], out: list[float]) -> int:
    """Each token's arrival at the client (the delta that completed it) minus its
    emission at the fake; returns how many tokens arrived. Deltas after a gap are
    not counted (the turn is then not exact anyway)."""
    ends = token_ends(r.tokens)
    have = k = 0
    for t_recv, offset, length in r.deltas:
        end = offset + length
        if offset > have or end <= have:
            continue
        have = end
        while k < len(ends) and ends[k] <= end and k < len(times):
            out.append(t_recv - times[k])
            k += 1
    return k
