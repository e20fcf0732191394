"""CPU per answer-stream append (conversations/streams.py), with Redis, in-process.

    .venv/bin/python -m bench.stream_append --redis-url redis://127.0.0.1:6379/12

`answers` concurrent answers each append `deltas` deltas one after another (as a
turn does: each append awaited before the next, under its coalescer's lock);
the figure is this process's CPU time (`time.process_time`) per append, and
the wall time of the whole run. Several rounds, the min and median printed.
Without the load of a server, a client or a fake, this is the Redis client's
own cost per delta, the part of "CPU per delivered token" it accounts for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time


async def _run(stream: object, answers: int, deltas: int, first_id: int) -> tuple[float, float]:
    async def answer(message_id: int) -> None:
        offset = 0
        for _ in range(deltas):
            await stream.append(message_id, offset, "word ")  # type: ignore[attr-defined]
            offset += 5

    ids = range(first_id, first_id + answers)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(answer(i) for i in ids))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    live = stream.live  # type: ignore[attr-defined]
    await live.delete(*(stream.key(i) for i in ids))  # type: ignore[attr-defined]
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--answers", default="1,10,100")
    parser.add_argument("--appends", type=int, default=5000, help="appends per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatimg.settings")
    import django

    django.setup()
    import redis

    from conversations.streams import RedisStreams

    async def measure() -> list[dict[str, object]]:
        rows = []
        for answers in (int(n) for n in args.answers.split(",")):
            stream = RedisStreams(args.redis_url, f"bench-append-{os.getpid()}")
            deltas = max(1, args.appends // answers)
            await _run(stream, answers, 50, 10_000_000)  # warm: connections, imports
            cpu_us, wall_ms = [], []
            for round_ in range(args.rounds):
                cpu, wall = await _run(stream, answers, deltas, round_ * answers)
                cpu_us.append(1e6 * cpu / (answers * deltas))
                wall_ms.append(1e3 * wall)
            rows.append(
                {
                    "answers": answers,
                    "appends": answers * deltas,
                    "cpu_us_per_append_min": round(min(cpu_us), 1),
                    "cpu_us_per_append_p50": round(statistics.median(cpu_us), 1),
                    "wall_ms_p50": round(statistics.median(wall_ms), 1),
                }
            )
        return rows

    rows = asyncio.run(measure())
    info = {"hiredis": redis.utils.HIREDIS_AVAILABLE, "load_average_1m": os.getloadavg()[0]}
    for row in rows:
        print(json.dumps({**row, **info}))


if __name__ == "__main__":
    main()
