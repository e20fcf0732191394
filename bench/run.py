"""Run the benchmarks and print the results tables (docs/benchmarks.md).

    .venv/bin/python -m bench.run                       # everything, SQLite + in-memory layer
    .venv/bin/python -m bench.run --config postgres-memory --scenarios sweep --levels 200
    .venv/bin/python -m bench.run --config all --out /tmp/bench.json

Scenarios (each on a fresh daphne process, same database):
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
from bench.common import CpuMeter, rss_kib
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
    return CpuMeter({"daphne": stack.app.pid, "fake": stack.fake.pid, "client": os.getpid()})


async def _rss_peak(pid: int, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], rss_kib(pid))
        await asyncio.sleep(0.5)


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
    with Stack(db=db, layer=layer, pin=args.pin, extra_env=extra, keep=args.keep) as stack:
        out["label"] = stack.label() + (f" + patches {args.patches}" if args.patches else "")
        print(f"== {stack.label()}  (work dir {stack.workdir})", flush=True)
        stack.start_fake()
        stack.prepare_db(users=max([*args.levels, 50]))
        scenarios = args.scenarios
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
                row = asyncio.run(
                    sweep_level(stack, streams, args.sweep_tokens, args.ramp, profile)
                )
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
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds to spread the sends")
    parser.add_argument("--ttft-streams", type=_ints, default=[1, 50])
    parser.add_argument("--ttft-seconds", type=float, default=30.0)
    parser.add_argument("--ttft-tokens", type=int, default=100, help="answer length per turn")
    parser.add_argument("--profile-ttft", action="store_true", help="py-spy the ttft runs")
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
