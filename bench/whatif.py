"""Measure the proposed fixes one by one: the sweep at fixed levels, per patch set.

    .venv/bin/python -m bench.whatif --config sqlite-memory --levels 50 \
        --sets ",gc_young_10k"

Each set is a "+"-joined list of bench/patches.py names ("" = the app as written,
ALL = every patch that applies to the config). Prints one table row per set and level.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import run
from bench.report import _cpu, _integrity, _server

# Every proposal still open (the adopted ones are in the app now): none.
MEMORY_ALL = ""
REDIS_ALL = ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="sqlite-memory")
    parser.add_argument("--levels", type=run._ints, default=[50])
    parser.add_argument("--sets", default=",ALL")
    parser.add_argument("--sweep-tokens", type=int, default=500)
    parser.add_argument("--out")
    parser.add_argument("--repeat", type=int, default=1, help="run each set this many times")
    parser.add_argument("--show", help="only print the table of an --out file")
    args = parser.parse_args()
    if args.show:
        print(table([(p, r) for p, r in json.loads(Path(args.show).read_text())]))
        return
    rows = []
    for patch_set in args.sets.split(",") * args.repeat:
        if patch_set.startswith("ALL"):  # "ALL" or "ALL+more"
            every = REDIS_ALL if args.config.endswith("redis") else MEMORY_ALL
            patch_set = every + patch_set[3:]
        ns = argparse.Namespace(
            scenarios={"sweep"},
            levels=args.levels,
            sweep_tokens=args.sweep_tokens,
            ramp=2.0,
            pin=False,
            profile=[],
            profile_ttft=False,
            profile_dir="/tmp",
            keep=False,
            patches=patch_set.replace("+", ","),
        )
        result = run.run_config(args.config, ns)
        for row in result["sweep"]:
            rows.append((patch_set or "(as written)", row))
    if args.out:
        Path(args.out).write_text(json.dumps([[p, r] for p, r in rows], indent=1, default=str))
    print(table(rows))


def table(rows: list[tuple[str, dict]]) -> str:
    lines = [
        "| patches | streams | delta p50 / p99 ms | steady delta p50 / p99 ms | steady gap p99 ms"
        " | added TTFT p50 / p99 ms | integrity | CPU % daphne/fake/client"
        " | server loop lag p99 / max ms | full GCs (max ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for patch_set, r in rows:
        lines.append(
            f"| {patch_set} | {r['streams']} | {r['delta_p50_ms']} / {r['delta_p99_ms']} | "
            f"{r.get('steady_delta_p50_ms')} / {r.get('steady_delta_p99_ms')} | "
            f"{r.get('steady_gap_p99_ms')} | {r['ttft_p50_ms']} / {r['ttft_p99_ms']} | "
            f"{_integrity(r)} | {_cpu(r)} | {_server(r)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
