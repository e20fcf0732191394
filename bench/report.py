"""Markdown tables from a bench.run JSON report.

.venv/bin/python -m bench.report /tmp/bench.json
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu(row: dict[str, Any]) -> str:
    cpu = row.get("cpu") or {}
    return " / ".join(f"{cpu.get(k, 0):.0f}" for k in ("daphne", "fake", "client"))


def _server(row: dict[str, Any]) -> str:
    """Server event-loop lag and full (generation 2) garbage collections."""
    server = row.get("server")
    if not server:
        return "? | ?"
    gen2 = server["gc"]["2"]
    return (
        f"{server['loop_lag_p99_ms']} / {server['loop_lag_max_ms']} | "
        f"{gen2['count']} ({gen2['max_ms']})"
    )


def _integrity(row: dict[str, Any]) -> str:
    bad = row["failed"]
    anomalies = ", ".join(f"{k} {v}" for k, v in sorted(row["anomalies"].items()))
    text = f"{row['exact']}/{row['turns']} exact"
    if bad:
        text += f", {bad} not ({dict(row['errors'])})"
    if anomalies:
        text += f"; {anomalies}"
    return text


def _daphne_cpu(row: dict[str, Any]) -> str:
    cpu = row.get("cpu") or {}
    daphne = [v for k, v in sorted(cpu.items()) if k.startswith("daphne")]
    return " + ".join(f"{v:.0f}" for v in daphne) + f" / {cpu.get('client', 0):.0f}"


def crowd_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        [
            "processes",
            "pinned",
            "streams (+ followers)",
            "sends",
            "load avg 1m; others' CPU % of a core",
            "e2e added TTFT p50 / p99 ms",
            "send → accepted p50 / p99 ms",
            "send → upstream request p50 / p99 ms",
            "added delay per token p50 / p99 / max ms",
            "followers: per token p99 ms",
            "integrity",
            "CPU µs per delivered token",
            "CPU % daphne / client",
            "client lag p99 ms",
            "RSS before → peak MiB",
        ],
        [
            [
                r["processes"],
                "yes" if r.get("pinned") else "no",
                f"{r['streams']}" + (f" (+{r['followers']})" if r.get("followers") else ""),
                ("at once" if not r.get("ramp") else f"over {r['ramp']:g} s")
                + f", {r['conversations']} chats",
                f"{r.get('load_average_1m')}; {r.get('others_cpu_pct_of_core', '?')}",
                f"{r['e2e_ttft_p50_ms']} / {r['e2e_ttft_p99_ms']}",
                f"{r['accepted_p50_ms']} / {r['accepted_p99_ms']}",
                f"{r['start_p50_ms']} / {r['start_p99_ms']}",
                f"{r['token_p50_ms']} / {r['token_p99_ms']} / {r['token_max_ms']}",
                r["follower_token_p99_ms"] if r.get("followers") else "",
                _integrity(r),
                r["cpu_us_per_token"],
                _daphne_cpu(r),
                r["client_lag_p99_ms"],
                " + ".join(
                    f"{a} → {b}"
                    for a, b in zip(r["rss_before_mib"], r["rss_peak_mib"], strict=True)
                ),
            ]
            for r in rows
        ],
    )


def tables(report: dict[str, Any]) -> str:
    out = []
    for run in report["runs"]:
        out.append(f"### {run['label']}\n")
        if run.get("crowd"):
            out.append(crowd_table(run["crowd"]) + "\n")
        if run.get("open"):
            r = run["open"]
            out.append(
                _table(
                    [
                        "messages / images",
                        "message articles / image URLs in the page",
                        "requests",
                        "SQL queries per request",
                        "p50 / p95 / max ms",
                        "of which SQL p50 ms",
                        "page KiB",
                        "load avg 1m",
                    ],
                    [
                        [
                            f"{r['messages']} / {r['images']}",
                            f"{r['messages_in_page']} / {r['images_in_page']}",
                            r["requests"],
                            r["queries_min"]
                            if r["queries_min"] == r["queries_max"]
                            else f"{r['queries_min']}-{r['queries_max']}",
                            f"{r['p50_ms']} / {r['p95_ms']} / {r['max_ms']}",
                            r.get("sql_p50_ms", "?"),
                            r["page_kib"],
                            r["load_average_1m"],
                        ]
                    ],
                )
                + "\n"
            )
        if run.get("image"):
            r = run["image"]
            out.append(
                _table(
                    [
                        "images (ok)",
                        "response MiB",
                        "bytes → tool.completed p50 / p95 / max ms",
                        "of which: API call returns p50 / p95",
                        "decode p50",
                        "upload p50",
                        "rows + publish + delivery p50 / p95",
                        "load avg 1m",
                    ],
                    [
                        [
                            f"{r['images']} ({r['ok']})",
                            r.get("response_mib"),
                            f"{r['p50_ms']} / {r['p95_ms']} / {r['max_ms']}",
                            f"{r['fetch_p50_ms']} / {r['fetch_p95_ms']}",
                            r["decode_p50_ms"],
                            r["upload_p50_ms"],
                            f"{r['rest_p50_ms']} / {r['rest_p95_ms']}",
                            r["load_average_1m"],
                        ]
                    ],
                )
                + "\n"
            )
        if run.get("ttft"):
            out.append(
                _table(
                    [
                        "streams",
                        "tokens/answer",
                        "turns (per s)",
                        "added TTFT p50 ms",
                        "p99",
                        "max",
                        "send→upstream p50 ms",
                        "p99",
                        "delta p99 ms",
                        "integrity",
                        "CPU % daphne/fake/client",
                        "client lag p99 ms",
                    ],
                    [
                        [
                            r["streams"],
                            r.get("tokens", 100),
                            f"{r['turns']} ({r.get('turns_per_s', '?')})",
                            r["ttft_p50_ms"],
                            r["ttft_p99_ms"],
                            r["ttft_max_ms"],
                            r["start_p50_ms"],
                            r["start_p99_ms"],
                            r["delta_p99_ms"],
                            _integrity(r),
                            _cpu(r),
                            r["client_lag_p99_ms"],
                        ]
                        for r in run["ttft"]
                    ],
                )
                + "\n"
            )
        if run.get("sweep"):
            out.append(
                _table(
                    [
                        "streams",
                        "added TTFT p50/p99 ms",
                        "added delay per delta p50 ms",
                        "p99",
                        "max",
                        "added gap p99 ms",
                        "steady: delta p50 / p99 / max ms",
                        "steady: gap p99 ms",
                        "integrity",
                        "fake late p99 ms",
                        "CPU % daphne/fake/client",
                        "client lag p99 ms",
                        "RSS peak MiB",
                    ],
                    [
                        [
                            r["streams"],
                            f"{r['ttft_p50_ms']} / {r['ttft_p99_ms']}",
                            r["delta_p50_ms"],
                            r["delta_p99_ms"],
                            r["delta_max_ms"],
                            r["gap_p99_ms"],
                            f"{r.get('steady_delta_p50_ms')} / {r.get('steady_delta_p99_ms')}"
                            f" / {r.get('steady_delta_max_ms')}",
                            r.get("steady_gap_p99_ms"),
                            _integrity(r),
                            r["fake_late_p99_ms"],
                            _cpu(r),
                            r["client_lag_p99_ms"],
                            r["rss_peak_mib"],
                        ]
                        for r in run["sweep"]
                    ],
                )
                + "\n"
            )
        if run.get("writes"):
            out.append(
                _table(
                    [
                        "turn",
                        "tokens",
                        "pace",
                        "turn s",
                        "exact",
                        "writes",
                        "by table",
                        "pg_stat_database",
                    ],
                    [
                        [
                            r["turn"],
                            r["tokens"],
                            "full speed" if r["delay"] == 0 else f"{1 / r['delay']:.0f} tok/s",
                            r["seconds"],
                            r["exact"],
                            r["writes"],
                            ", ".join(f"{k} x{v}" for k, v in sorted(r["by_table"].items())),
                            r["pg_stat_database"] or "",
                        ]
                        for r in run["writes"]
                    ],
                )
                + "\n"
            )
        if run.get("memory"):
            out.append(
                _table(
                    [
                        "idle sockets",
                        "RSS before MiB",
                        "RSS after MiB",
                        "KiB per socket",
                        "still answering ping",
                    ],
                    [
                        [
                            r["sockets"],
                            r["rss_base_mib"],
                            r["rss_mib"],
                            r["kib_per_socket"],
                            r.get("alive", "?"),
                        ]
                        for r in run["memory"]
                    ],
                )
                + "\n"
            )
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(tables(json.load(handle)))
