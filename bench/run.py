"""Run the benchmarks and print the results tables (docs/benchmarks.md).

    .venv/bin/python -m bench.run                       # everything, SQLite + in-memory layer
    .venv/bin/python -m bench.run --config postgres-memory --scenarios sweep --levels 200
    .venv/bin/python -m bench.run --config all --out /tmp/bench.json

Scenarios (each on a fresh daphne process, same database):
  crowd   from the user's send: N sockets connected and ready send at once (or over
          --ramp s), e2e added TTFT, send -> accepted, added delay per token, CPU per
          delivered token, RSS; one or two daphne processes, optional followers
  open    open a 500-message chat with 100 images: SQL queries and time per GET /c/<id>/
  image   the image path: provider's PNG bytes available -> tool.completed at the client
  ttft    added time to first token at 50 concurrent streams (back-to-back turns)
  sweep   concurrent streams at 50 tokens/s: added delay per delta, lost characters
  writes  database writes for one turn: 200 vs 2,000 tokens, at 50 tokens/s and full speed
  memory  RSS per idle authenticated socket
Every loop is bounded: a scenario takes seconds to a couple of minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import load
from bench.common import CpuMeter, cpu_seconds_total, machine_busy_seconds, percentile, rss_kib
from bench.stack import Stack

CONFIGS = {
    "sqlite-memory": ("sqlite", "memory"),
    "postgres-memory": ("postgres", "memory"),
    "postgres-redis": ("postgres", "redis"),
    "sqlite-redis": ("sqlite", "redis"),
}


# --- scenarios -------------------------------------------------------------------------


def _meter(stack: Stack) -> CpuMeter:
    assert stack.app is not None and stack.fake is not None
    pids = {"daphne": stack.app.pid, "fake": stack.fake.pid, "client": os.getpid()}
    pids.update({f"daphne{i + 1}": pid for i, pid in enumerate(stack.app_pids[1:])})
    return CpuMeter(pids)


async def _rss_peak(pid: int, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], rss_kib(pid))
        await asyncio.sleep(0.5)


def _load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def crowd(
    stack: Stack,
    streams: int,
    tokens: int,
    ramp: float,
    *,
    upstream_ttft: float = 0.2,
    followers: int = 0,
    existing: bool = False,
    profile: Path | None = None,
) -> dict[str, Any]:
    """From the user's send: `streams` sockets, connected and ready, send at once.

    Sockets are spread over the daphne processes (socket i on process i % P), as
    two processes behind no balancer would see them. With `followers` F > 0 (or
    `existing`), every sender first runs a 5-token turn to create its
    conversation; F more sockets of the same user then follow each conversation,
    the first on the next process (so that a follower of a conversation may be on
    either). Then every sender sends one answer of `tokens` tokens (upstream TTFT
    `upstream_ttft`, 50 tokens/s), all in the same turn of the client's event loop
    (`ramp` 0) or spread over `ramp` seconds (steady turnover).
    """
    stack.reset_stamps()
    processes = len(stack.app_ports)
    # A process's first turn pays one-off costs (the SDK client, its HTTP session,
    # imports): one unmeasured turn per process first, as a serving process has had.
    for url in stack.ws_urls:
        ws = await load.open_socket(url, stack.tokens[-1])
        first = await load.run_turn(ws, 5, 0.0, timeout=60)
        await ws.close()
        if not first.exact:
            raise RuntimeError(f"the warm-up turn failed: {first.error or first.status}")
    senders = await load.open_many(stack.ws_urls, stack.tokens, streams)
    conversations: list[str | None] = [None] * streams
    previous: list[int] = [0] * streams
    watchers: list[tuple[int, Any]] = []
    if followers or existing:
        gate = asyncio.Semaphore(50)

        async def warm(ws: Any) -> load.TurnResult:
            async with gate:
                return await load.run_turn(ws, 5, 0.0, timeout=120)

        warmed = await asyncio.gather(*(warm(ws) for ws in senders))
        bad = [r for r in warmed if not r.exact]
        if bad:
            raise RuntimeError(f"{len(bad)} warm-up turns failed: {bad[0].error or bad[0].status}")
        conversations = [r.conversation_id for r in warmed]
        previous = [int(r.assistant_message_id or 0) for r in warmed]
        if followers:
            count = streams * followers
            sockets = await load.open_many(
                stack.ws_urls,
                stack.tokens,
                count,
                token_index=lambda j: (j // followers) % len(stack.tokens),
                url_index=lambda j: (j // followers) + 1 + j % followers,
            )
            for j, ws in enumerate(sockets):
                await load.subscribe(ws, conversations[j // followers] or "")
                watchers.append((j // followers, ws))
        await asyncio.sleep(2.0)  # the warm-up's title requests are done by then
    pids = stack.app_pids
    peaks = [[rss_kib(pid)] for pid in pids]
    rss_before = [p[0] for p in peaks]
    peak_tasks = [
        asyncio.get_running_loop().create_task(_rss_peak(pid, peak))
        for pid, peak in zip(pids, peaks, strict=True)
    ]
    spy = None
    answer_seconds = upstream_ttft + tokens * 0.02
    if profile is not None:
        # A flash crowd's turn starts take longer than one answer: 20 ms each at most.
        spy = _py_spy(pids[0], ramp + answer_seconds + 1 + 0.02 * streams, profile)
    timeout = answer_seconds * 4 + ramp + 60
    start = asyncio.Event()

    async def client(ws: Any, index: int) -> load.TurnResult:
        await start.wait()
        if ramp:
            await asyncio.sleep(index * ramp / streams)
        return await load.run_turn(
            ws,
            tokens,
            0.02,
            timeout=timeout,
            conversation_id=conversations[index],
            ttft=upstream_ttft,
        )

    for index in range(processes):
        stack.probes(reset=True, process=index)
    meter = _meter(stack)
    cpu_start, wall_start = cpu_seconds_total(pids), time.monotonic()
    ours = [*pids, stack.fake.pid if stack.fake else os.getpid(), os.getpid()]
    ours_start, busy_start = cpu_seconds_total(ours), machine_busy_seconds()
    load_average = _load_average()
    tasks = [asyncio.ensure_future(client(ws, i)) for i, ws in enumerate(senders)]
    tasks += [
        asyncio.ensure_future(load.follow_turn(ws, previous[i], timeout)) for i, ws in watchers
    ]
    await asyncio.sleep(0.05)  # every task is now waiting: on `start`, or in recv()
    steady_from = time.time() + ramp + 1.0
    with load.LoopLag() as lag:
        start.set()
        results = await asyncio.gather(*tasks)
    cpu_used = cpu_seconds_total(pids) - cpu_start
    wall = time.monotonic() - wall_start
    busy = machine_busy_seconds() - busy_start
    others = busy - (cpu_seconds_total(ours) - ours_start)
    cpu = meter.read()
    for task in peak_tasks:
        task.cancel()
    if spy is not None:
        spy.wait(120)
    await load.close_many(senders + [ws for _, ws in watchers])
    row = load.analyse(list(results), stack.stamps(), steady_from)
    row["server"] = stack.probes()
    delivered = row["tokens_delivered"]
    row.update(
        streams=streams,
        processes=processes,
        followers_per_stream=followers,
        conversations="existing" if followers or existing else "new",
        ramp=ramp,
        tokens=tokens,
        upstream_ttft_ms=round(1000 * upstream_ttft),
        pinned=stack.pin,
        load_average_1m=load_average,
        # Both cores' busy time during the run, and the part that was not daphne,
        # the fake or this client (PostgreSQL and Redis count here: shared services).
        machine_busy_pct=round(100 * busy / wall / (os.cpu_count() or 1)),
        others_cpu_pct_of_core=round(100 * others / wall),
        cpu=cpu,
        daphne_cpu_s=round(cpu_used, 2),
        wall_s=round(wall, 2),
        cpu_us_per_token=round(1e6 * cpu_used / delivered, 1) if delivered else None,
        client_lag_p99_ms=round(lag.p99_ms(), 2),
        rss_before_mib=[round(r / 1024, 1) for r in rss_before],
        rss_peak_mib=[round(p[0] / 1024, 1) for p in peaks],
    )
    return row


def open_chat(stack: Stack, info: dict[str, Any], requests: int) -> dict[str, Any]:
    """GET /c/<id>/ of the long chat with its owner's session cookie, one at a time.

    The first request warms the process up (templates, URLconf) and is not counted.
    Each request's SQL statements are counted in the server (bench/asgi.py).
    """
    import http.client
    import re

    url_path = f"/c/{info['conversation_id']}/"
    times, queries, sizes, sql_ms = [], [], [], []
    statements: list[str] = []
    most: list[str] = []  # the statements of the request that made the most
    images = messages = 0
    load_average = _load_average()
    for index in range(requests + 1):
        stack.sql(reset=True)
        connection = http.client.HTTPConnection("127.0.0.1", stack.app_port, timeout=60)
        started = time.perf_counter()
        connection.request("GET", url_path, headers={"Cookie": info["cookie"]})
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        connection.close()
        if response.status != 200:
            raise RuntimeError(f"GET {url_path}: HTTP {response.status}")
        counts = stack.sql()
        if index == 0:
            html = body.decode()
            images = len(set(re.findall(r"/images/([0-9a-f-]{36})/", html)))
            messages = len(re.findall(r'data-message-id="', html))
            continue
        times.append(elapsed)
        queries.append(sum(counts["kinds"].values()))
        sql_ms.append(counts.get("sql_ms", 0.0) / 1000)
        statements = counts.get("statements", [])
        if len(statements) > len(most):
            most = statements
        sizes.append(len(body))

    def ms(q: float) -> float:
        return round(1000 * percentile(times, q), 1)

    return {
        "messages": info["messages"],
        "images": info["images"],
        "images_in_page": images,
        "messages_in_page": messages,
        "requests": requests,
        "queries_min": min(queries),
        "queries_max": max(queries),
        "p50_ms": ms(50),
        "p95_ms": ms(95),
        "max_ms": ms(100),
        "sql_p50_ms": round(1000 * percentile(sql_ms, 50), 1),
        "page_kib": round(sum(sizes) / len(sizes) / 1024, 1),
        "statements": statements,  # the last request's, shortened
        "statements_most": most if len(most) > len(statements) else [],
        "pinned": stack.pin,
        "load_average_1m": load_average,
    }


async def image_path(stack: Stack, count: int) -> dict[str, Any]:
    """`count` generate_image turns, one at a time, on one socket and conversation.

    Measured: the fake's time just before it writes the image response (a
    1024x1024 PNG, rendered and base64-encoded: the provider's bytes are
    available) to the client's receipt of tool.completed. The server's probe
    splits it: the image API call returning (HTTP read, JSON, base64), decode
    (PIL), upload (storage); the rest is the rows and the publish.
    """
    stack.reset_stamps()
    stack.probes(reset=True)
    ws = await load.open_socket(stack.ws_url, stack.tokens[0])
    load_average = _load_average()
    results = []
    conversation = None
    for _ in range(count):
        result = await load.run_turn(
            ws, 0, 0.0, timeout=120, image=True, conversation_id=conversation
        )
        conversation = conversation or result.conversation_id
        results.append(result)
    await ws.close()
    stamps = stack.stamps()
    phases = stack.probes()["images"]
    total, fetch, decode, upload, rest, sizes = [], [], [], [], [], []
    failures = []
    for r in results:
        stamp = stamps.get("image-" + r.bench_id) or {}
        phase = phases.get(r.bench_id) or {}
        ready = stamp.get("image_ready")
        if not r.exact or ready is None or r.t_tool_completed is None or not phase:
            failures.append(r.error or r.tool_error or r.status)
            continue
        total.append(r.t_tool_completed - ready)
        sizes.append(stamp.get("image_response_bytes", 0))
        fetch.append(phase["picture"] - ready)
        decode.append(phase.get("decode_ms", 0) / 1000)
        upload.append(phase.get("upload_ms", 0) / 1000)
        rest.append(total[-1] - fetch[-1] - decode[-1] - upload[-1])

    def ms(values: list[float], q: float) -> float:
        return round(1000 * percentile(values, q), 1)

    return {
        "images": count,
        "ok": len(total),
        "response_mib": round(sum(sizes) / max(1, len(sizes)) / 2**20, 2),
        "failures": failures[:5],
        "p50_ms": ms(total, 50),
        "p95_ms": ms(total, 95),
        "max_ms": ms(total, 100),
        "fetch_p50_ms": ms(fetch, 50),
        "decode_p50_ms": ms(decode, 50),
        "upload_p50_ms": ms(upload, 50),
        "rest_p50_ms": ms(rest, 50),
        "fetch_p95_ms": ms(fetch, 95),
        "rest_p95_ms": ms(rest, 95),
        "pinned": stack.pin,
        "load_average_1m": load_average,
    }


def _py_spy(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """Sample the server for `seconds` without pausing it (py-spy --nonblocking)."""
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid)]
    command += ["--duration", str(int(seconds)), "--rate", "250", "--nonblocking"]
    command += ["--format", "raw", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


async def ttft(
    stack: Stack, streams: int, seconds: float, tokens: int = 100, profile: Path | None = None
) -> dict[str, Any]:
    """`streams` sockets each run turns back to back for `seconds` (one conversation each)."""
    stack.reset_stamps()
    assert stack.app is not None
    sockets = await load.open_many(stack.ws_url, stack.tokens, streams)
    spy = _py_spy(stack.app.pid, seconds * 0.8, profile) if profile is not None else None
    results: list[load.TurnResult] = []
    deadline = time.monotonic() + seconds

    async def client(ws: Any, index: int) -> None:
        # One conversation per socket: its first turn starts it, the others follow up.
        conversation = None
        await asyncio.sleep(random.uniform(0, 1.0))
        while time.monotonic() < deadline:
            result = await load.run_turn(ws, tokens, 0.02, timeout=60, conversation_id=conversation)
            results.append(result)
            conversation = conversation or result.conversation_id
            await asyncio.sleep(random.uniform(0, 0.2))

    stack.probes(reset=True)
    meter = _meter(stack)
    with load.LoopLag() as lag:
        await asyncio.gather(*(client(ws, i) for i, ws in enumerate(sockets)))
    cpu = meter.read()
    if spy is not None:
        spy.wait(120)
    await load.close_many(sockets)
    row = load.analyse(results, stack.stamps())
    row["server"] = stack.probes()
    row.update(
        streams=streams,
        tokens=tokens,
        cpu=cpu,
        client_lag_p99_ms=round(lag.p99_ms(), 2),
        turns_per_s=round(len(results) / seconds, 1),
    )
    return row


async def sweep_level(
    stack: Stack,
    streams: int,
    tokens: int,
    ramp: float,
    profile: Path | None = None,
) -> dict[str, Any]:
    """`streams` sockets, one long answer each, sends spread over `ramp` seconds."""
    stack.reset_stamps()
    assert stack.app is not None
    sockets = await load.open_many(stack.ws_url, stack.tokens, streams)
    rss_before = rss_kib(stack.app.pid)
    peak = [rss_before]
    peak_task = asyncio.get_running_loop().create_task(_rss_peak(stack.app.pid, peak))
    spy = None
    if profile is not None:
        spy = _py_spy(stack.app.pid, ramp + tokens * 0.02 * 0.8, profile)

    async def client(ws: Any, index: int) -> load.TurnResult:
        await asyncio.sleep(index * ramp / streams)
        return await load.run_turn(ws, tokens, 0.02, timeout=tokens * 0.02 * 4 + 60)

    stack.probes(reset=True)
    meter = _meter(stack)
    steady_from = time.time() + ramp + 1.0
    with load.LoopLag() as lag:
        results = await asyncio.gather(*(client(ws, i) for i, ws in enumerate(sockets)))
    cpu = meter.read()
    peak_task.cancel()
    if spy is not None:
        spy.wait(120)
    await load.close_many(sockets)
    row = load.analyse(list(results), stack.stamps(), steady_from)
    row["server"] = stack.probes()
    row.update(
        streams=streams,
        cpu=cpu,
        client_lag_p99_ms=round(lag.p99_ms(), 2),
        rss_peak_mib=round(peak[0] / 1024, 1),
        chars_per_stream=len(load.reply_text(tokens)),
    )
    return row


WRITE_TURNS = (
    # (kind, tokens, seconds between tokens)
    ("new", 200, 0.0),
    ("new", 2000, 0.0),
    ("follow-up", 200, 0.0),
    ("follow-up", 2000, 0.0),
    ("follow-up", 200, 0.02),
    ("follow-up", 2000, 0.02),
    ("new", 2000, 0.02),
)


async def writes(stack: Stack) -> list[dict[str, Any]]:
    """Statements issued by the server for one turn, one turn at a time.

    A "new" turn starts a conversation (and gets a model-written title after it);
    a "follow-up" continues the last conversation.
    """
    ws = await load.open_socket(stack.ws_url, stack.tokens[0])
    rows = []
    conversation = None
    for kind, tokens, delay in WRITE_TURNS:
        await asyncio.sleep(0.5)
        stack.sql(reset=True)
        pg_before = stack.pg_stats()
        result = await load.run_turn(
            ws,
            tokens,
            delay,
            timeout=tokens * delay * 3 + 60,
            conversation_id=None if kind == "new" else conversation,
            linger=3.0 if kind == "new" else 0.5,  # the title comes after the answer
        )
        conversation = result.conversation_id
        counts = stack.sql()
        pg = None
        if pg_before is not None:
            await asyncio.sleep(11)  # PostgreSQL flushes a busy backend's stats within 10 s
            after = stack.pg_stats()
            assert after is not None
            pg = {k: after[k] - pg_before[k] for k in after}
        rows.append(
            {
                "turn": kind,
                "frames_after_end": result.after,
                "tokens": tokens,
                "delay": delay,
                "seconds": round((result.t_end or time.time()) - result.t_send, 2),
                "exact": result.exact,
                "writes": counts["write_total"],
                "by_table": counts["writes"],
                "kinds": counts["kinds"],
                "pg_stat_database": pg,
            }
        )
    await ws.close()
    return rows


async def memory(stack: Stack, counts: list[int]) -> list[dict[str, Any]]:
    """RSS of the daphne process with N idle authenticated sockets open."""
    assert stack.app is not None
    pid = stack.app.pid
    warm = await load.open_many(stack.ws_url, stack.tokens, 20)
    await asyncio.sleep(3)
    base = rss_kib(pid)
    sockets: list[Any] = []
    rows = []
    for count in counts:
        sockets += await load.open_many(stack.ws_url, stack.tokens, count - len(sockets))
        await asyncio.sleep(3)
        rss = rss_kib(pid)
        rows.append(
            {
                "sockets": count,
                "rss_base_mib": round(base / 1024, 1),
                "rss_mib": round(rss / 1024, 1),
                "kib_per_socket": round((rss - base) / count, 1),
                "alive": await load.alive(sockets),
            }
        )
    await load.close_many(sockets + warm)
    return rows


# --- driver ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    head = run(
        "git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short", "HEAD"
    )
    dirty = run("git", "-C", str(Path(__file__).resolve().parents[1]), "status", "--porcelain")
    return {
        "nproc": os.cpu_count(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        ),
        "memory": run("free", "-h").splitlines()[1] if run("free", "-h") else "?",
        "python": platform.python_version(),
        "commit": head + (" (+ uncommitted changes)" if dirty else ""),
    }


def run_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    db, layer = CONFIGS[name]
    out: dict[str, Any] = {"config": name}
    extra = {"BENCH_PATCHES": args.patches} if args.patches else {}
    with Stack(
        db=db,
        layer=layer,
        pin=args.pin,
        extra_env=extra,
        keep=args.keep,
        # bench.whatif builds its own Namespace without these.
        pg_db=getattr(args, "pg_db", None) or os.environ.get("BENCH_PG_DB", "chatimg_bench"),
        redis_url=getattr(args, "redis_url", None)
        or os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7"),
    ) as stack:
        out["label"] = stack.label() + (f" + patches {args.patches}" if args.patches else "")
        print(f"== {stack.label()}  (work dir {stack.workdir})", flush=True)
        stack.start_fake()
        stack.prepare_db(users=max([*args.levels, 50]))
        scenarios = args.scenarios
        if "open" in scenarios:
            info = stack.prepare_long_chat(args.open_messages, args.open_images)
            stack.start_app()
            spy = None
            if args.profile_open:
                assert stack.app is not None
                path = Path(args.profile_dir) / f"pyspy-{name}-open.txt"
                spy = _py_spy(stack.app.pid, args.open_requests * 0.3 + 2, path)
            out["open"] = open_chat(stack, info, args.open_requests)
            if spy is not None:
                spy.wait(120)
            _print_rows("open", [out["open"]])
        if "image" in scenarios:
            stack.start_app()
            out["image"] = asyncio.run(image_path(stack, args.images))
            _print_rows("image", [out["image"]])
        if "crowd" in scenarios:
            out["crowd"] = []
            for streams in args.levels:
                for processes in args.processes:
                    stack.start_app(processes)
                    profile = None
                    if args.profile and streams in args.profile:
                        profile = (
                            Path(args.profile_dir) / f"pyspy-{name}-crowd-{streams}x{processes}.txt"
                        )
                    row = asyncio.run(
                        crowd(
                            stack,
                            streams,
                            args.crowd_tokens,
                            0.0 if args.ramp is None else args.ramp,
                            upstream_ttft=args.upstream_ttft_ms / 1000,
                            followers=args.followers,
                            existing=args.existing,
                            profile=profile,
                        )
                    )
                    if profile is not None:
                        row["profile"] = str(profile)
                    out["crowd"].append(row)
                    _print_rows("crowd", [row], skip=("timeline_p99_ms", "server"))
        if "memory" in scenarios:
            stack.start_app()
            out["memory"] = asyncio.run(memory(stack, args.memory_sockets))
            _print_rows("memory", out["memory"])
        if "writes" in scenarios:
            stack.start_app()
            out["writes"] = asyncio.run(writes(stack))
            _print_rows("writes", out["writes"], skip=("kinds", "by_table"))
        if "ttft" in scenarios:
            out["ttft"] = []
            for streams in args.ttft_streams:
                stack.start_app()
                profile = None
                if args.profile_ttft and streams > 1:
                    profile = Path(args.profile_dir) / f"pyspy-{name}-ttft-{streams}.txt"
                row = asyncio.run(
                    ttft(stack, streams, args.ttft_seconds, args.ttft_tokens, profile)
                )
                out["ttft"].append(row)
                _print_rows("ttft", [row])
        if "sweep" in scenarios:
            out["sweep"] = []
            for streams in args.levels:
                stack.start_app()
                profile = None
                if args.profile and streams in args.profile:
                    profile = Path(args.profile_dir) / f"pyspy-{name}-{streams}.txt"
                ramp = 2.0 if args.ramp is None else args.ramp
                row = asyncio.run(sweep_level(stack, streams, args.sweep_tokens, ramp, profile))
                if profile is not None:
                    row["profile"] = str(profile)
                out["sweep"].append(row)
                _print_rows("sweep", [row])
        stack.stop_app()
    return out


def _print_rows(title: str, rows: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> None:
    for row in rows:
        shown = {k: v for k, v in row.items() if k not in skip}
        print(f"[{title}] {json.dumps(shown, default=str)}", flush=True)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="sqlite-memory", help="|".join([*CONFIGS, "all"]))
    parser.add_argument("--scenarios", default="memory,writes,ttft,sweep")
    parser.add_argument("--levels", type=_ints, default=[50, 100, 200, 300, 400])
    parser.add_argument("--sweep-tokens", type=int, default=500, help="answer length per stream")
    parser.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="seconds to spread the sends (sweep: 2; crowd: 0, all at once)",
    )
    parser.add_argument("--crowd-tokens", type=int, default=200, help="crowd: answer length")
    parser.add_argument(
        "--upstream-ttft-ms", type=float, default=200, help="crowd: the fake's own TTFT"
    )
    parser.add_argument(
        "--processes", type=_ints, default=[1], help="crowd: daphne processes, e.g. 1,2"
    )
    parser.add_argument(
        "--followers", type=int, default=0, help="crowd: more sockets following each stream"
    )
    parser.add_argument(
        "--existing",
        action="store_true",
        help="crowd: send into existing conversations (a warm-up turn creates them)",
    )
    parser.add_argument("--open-messages", type=int, default=500)
    parser.add_argument("--open-images", type=int, default=100)
    parser.add_argument("--open-requests", type=int, default=50)
    parser.add_argument("--images", type=int, default=30, help="image: how many")
    parser.add_argument("--pg-db", default=os.environ.get("BENCH_PG_DB", "chatimg_bench"))
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
    )
    parser.add_argument("--ttft-streams", type=_ints, default=[1, 50])
    parser.add_argument("--ttft-seconds", type=float, default=30.0)
    parser.add_argument("--ttft-tokens", type=int, default=100, help="answer length per turn")
    parser.add_argument("--profile-ttft", action="store_true", help="py-spy the ttft runs")
    parser.add_argument("--profile-open", action="store_true", help="py-spy the open run")
    parser.add_argument("--memory-sockets", type=_ints, default=[1000, 2000])
    parser.add_argument("--pin", action="store_true", help="daphne on CPU 0, the rest on CPU 1")
    parser.add_argument("--profile", type=_ints, default=[], help="py-spy these sweep levels")
    parser.add_argument("--profile-dir", default="/tmp")
    parser.add_argument("--out", help="write all results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    parser.add_argument(
        "--patches", default="", help="what-if patches for the server (bench/patches.py)"
    )
    args = parser.parse_args(argv)
    args.scenarios = set(args.scenarios.split(","))
    if args.pin:
        os.sched_setaffinity(0, {1})
    names = list(CONFIGS) if args.config == "all" else args.config.split(",")
    if max(args.processes) > 1 and "crowd" in args.scenarios:
        memory_layers = [n for n in names if CONFIGS[n][1] != "redis"]
        if memory_layers:
            parser.error(f"--processes 2 needs the Redis layer, not {', '.join(memory_layers)}")
    report = {
        "machine": machine(),
        "args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()},
        "runs": [],
    }
    print(json.dumps(report["machine"]), flush=True)
    for name in names:
        report["runs"].append(run_config(name, args))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    from bench.report import tables

    print(tables(report))


if __name__ == "__main__":
    main()
