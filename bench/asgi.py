"""The app as benchmarked: ``chatimg.asgi.application`` plus an SQL statement counter.

    python -m daphne -b 127.0.0.1 -p PORT bench.asgi:application

Every database connection the process opens gets an ``execute_wrapper`` that
counts statements by kind (INSERT, UPDATE, DELETE, SELECT, ...) and by table for
writes. ``GET /__bench/sql`` returns the counts as JSON, ``POST /__bench/sql``
returns them and starts over. The endpoint is answered here, in front of Django,
so reading it costs no query. ``/__bench/probes`` reports event-loop stalls (a 50 ms
ticker) and garbage-collection pauses (``gc.callbacks``) the same way, and the
phases of each generated image (``images``: wall time at which the image API
call returned its bytes, decode and upload durations, keyed by the bench id in
the prompt), and with ``BENCH_PHASES=1`` the phases of every turn start
(``turn_phases``: first / p50 / last wall-clock ms from the first stamp, for
the consumer's handler, its database trip, the acceptance, its group join,
the launch, the turn's context read (regenerations), its stream append,
announcement and model request; the wrappers change
nothing else). The image probe wraps three functions of ``conversations``
(``llm.generate_images``, ``images.decode``, ``images._upload``) with timers and
changes nothing else. Nothing else about the app changes, unless
``BENCH_PATCHES`` names "what-if" patches (bench/patches.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import json
import os
import re
import threading
import time
from collections import Counter
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from django.db.backends.signals import connection_created

from bench import patches
from bench.common import IMAGE_MARKER_RE
from chatimg.asgi import application as app_application
from conversations import images as app_images
from conversations import llm as app_llm

APPLIED = patches.apply(os.environ.get("BENCH_PATCHES", ""))

_lock = threading.Lock()
_recent: list[str] = []  # the statements since the last reset (first 200, shortened)
_kinds: Counter[str] = Counter()
_sql_seconds = [0.0]  # time spent executing statements (driver + database), since reset
_writes: Counter[str] = Counter()
_TABLE_RE = re.compile(r'^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)"?', re.IGNORECASE)
WRITE_KINDS = {"INSERT", "UPDATE", "DELETE"}


def _count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    kind = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
    with _lock:
        _kinds[kind] += 1
        if len(_recent) < 200:
            _recent.append(" ".join(sql.split())[:160])
        if kind in WRITE_KINDS:
            match = _TABLE_RE.match(sql)
            _writes[f"{kind} {match.group(1) if match else '?'}"] += 1
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        with _lock:
            _sql_seconds[0] += time.perf_counter() - started


def _install(sender: Any, connection: Any, **kwargs: Any) -> None:
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


connection_created.connect(_install, weak=False)


def snapshot(reset: bool = False) -> dict[str, Any]:
    with _lock:
        data = {
            "kinds": dict(_kinds),
            "writes": dict(_writes),
            "write_total": sum(_kinds[k] for k in WRITE_KINDS),
            "patches": APPLIED,
            "statements": list(_recent),
            "sql_ms": round(1000 * _sql_seconds[0], 2),
        }
        if reset:
            _sql_seconds[0] = 0.0
            _recent.clear()
            _kinds.clear()
            _writes.clear()
    return data


# --- the image path, phase by phase ------------------------------------------------------

_image_phases: dict[str, dict[str, float]] = {}
_image_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("bench_image", default=None)


def _probe_images() -> None:
    generate, decode, upload = app_llm.generate_images, app_images.decode, app_images._upload

    @functools.wraps(generate)
    async def generate_images(prompt: str, **kwargs: Any) -> Any:
        match = IMAGE_MARKER_RE.fullmatch(prompt.strip())
        started = time.time()
        pictures = await generate(prompt, **kwargs)
        if match:
            # Awaited in the turn's own task: the id stays set for decode and upload.
            _image_id.set(match["id"])
            _image_phases[match["id"]] = {"called": started, "picture": time.time()}
        return pictures

    def timed(name: str, function: Any) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                key = _image_id.get()
                if key in _image_phases:
                    _image_phases[key][f"{name}_ms"] = 1000 * (time.perf_counter() - started)

        return wrapper

    app_llm.generate_images = generate_images
    app_images.decode = timed("decode", decode)
    app_images._upload = timed("upload", upload)


_probe_images()


# --- where a turn start's time goes: wall-clock stamps of its phases ----------------------

_phases: dict[str, list[float]] = {}


def _stamp(name: str) -> None:
    _phases.setdefault(name, []).append(time.time())


def _probe_turn_start() -> None:
    from conversations import consumers, turns

    def around(owner: Any, attribute: str, name: str) -> None:
        function = getattr(owner, attribute)
        if asyncio.iscoroutinefunction(function):

            @functools.wraps(function)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                _stamp(name + ">")
                try:
                    return await function(*args, **kwargs)
                finally:
                    _stamp(name + "<")

        else:

            @functools.wraps(function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                _stamp(name + ">")
                try:
                    return function(*args, **kwargs)
                finally:
                    _stamp(name + "<")

        setattr(owner, attribute, wrapper)

    around(consumers.ChatConsumer, "receive", "0 receive")
    around(consumers.ChatConsumer, "on_message_send", "1 on_message_send")
    around(consumers.ChatConsumer, "_begin_turn", "2 begin_turn (db)")
    around(consumers.ChatConsumer, "_accept", "3 accept")
    around(consumers.ChatConsumer, "_follow_own_turn", "3a follow (group_add)")
    around(consumers.runtime, "launch", "3c launch")
    around(turns.delivery, "announce", "4b announce")
    around(turns.streams.RedisStreams, "append_event", "4a stream append_event")
    around(turns.streams.FileStreams, "append_event", "4a stream append_event")
    around(turns.Turn, "_load_context", "4 load_context (db)")
    around(turns.Turn, "_stream_round", "5 stream_round")
    stream_chat = app_llm.stream_chat

    def traced(*args: Any, **kwargs: Any) -> Any:
        _stamp("6 stream_chat called")
        return stream_chat(*args, **kwargs)

    app_llm.stream_chat = traced


if os.environ.get("BENCH_PHASES"):
    _probe_turn_start()


def _phase_summary() -> dict[str, Any]:
    if not _phases:
        return {}
    zero = min(min(v) for v in _phases.values())
    # Wall clock of the first stamp: the client's sends (`first_send_epoch`) align with it.
    out: dict[str, Any] = {"zero_epoch": round(zero, 4)}
    for name in sorted(_phases):
        times = sorted(1000 * (t - zero) for t in _phases[name])
        out[name] = {
            "n": len(times),
            "first": round(times[0], 1),
            "p50": round(times[len(times) // 2], 1),
            "last": round(times[-1], 1),
        }
    return out


# --- event-loop stalls and garbage collections, for /__bench/probes ---------------------

_gc_pauses: list[tuple[int, float]] = []  # (generation, seconds)
_gc_started = 0.0
_lags: list[float] = []
_lag_times: list[float] = []  # wall time of each _lags entry
_ticker: asyncio.Task[None] | None = None


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _gc_pauses.append((info["generation"], time.perf_counter() - _gc_started))


gc.callbacks.append(_on_gc)


async def _tick(interval: float = 0.05) -> None:
    """How late the server's event loop wakes up: a stall delays every socket at once."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        _lags.append(loop.time() - start - interval)
        _lag_times.append(time.time())


def _by_second() -> dict[int, float]:
    worst: dict[int, float] = {}
    for at, lag in zip(_lag_times, _lags, strict=False):
        second = int(at)
        worst[second] = max(worst.get(second, 0.0), round(1000 * lag, 1))
    return worst


def probes(reset: bool = False) -> dict[str, Any]:
    lags = sorted(_lags)
    by_gen: dict[str, Any] = {}
    for gen in (0, 1, 2):
        pauses = [p for g, p in _gc_pauses if g == gen]
        by_gen[str(gen)] = {
            "count": len(pauses),
            "total_ms": round(1000 * sum(pauses), 1),
            "max_ms": round(1000 * max(pauses, default=0), 1),
        }
    data = {
        "loop_lag_p99_ms": round(1000 * lags[int(0.99 * (len(lags) - 1))], 1) if lags else None,
        "loop_lag_max_ms": round(1000 * lags[-1], 1) if lags else None,
        "loop_lag_over_50ms": sum(1 for lag in lags if lag > 0.05),
        "gc": by_gen,
        # The worst stall in each second (wall clock), to line up with the client's timeline.
        "lag_max_by_second_ms": _by_second(),
        "images": dict(_image_phases),
        "turn_phases": _phase_summary(),
    }
    if reset:
        _image_phases.clear()
        _phases.clear()
        _lags.clear()
        _lag_times.clear()
        _gc_pauses.clear()
    return data


async def _reply(send: Any, payload: dict[str, Any]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> Any:
    global _ticker
    if _ticker is None:
        _ticker = asyncio.get_running_loop().create_task(_tick())
    if scope["type"] == "http" and scope["path"] == "/__bench/probes":
        await _reply(send, probes(reset=scope["method"] == "POST"))
        return None
    if scope["type"] == "http" and scope["path"] == "/__bench/sql":
        body = json.dumps(snapshot(reset=scope["method"] == "POST")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return None
    return await app_application(scope, receive, send)
