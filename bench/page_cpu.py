"""CPU time and SQL statements of opening a long chat, in-process (no server, no client).

    .venv/bin/python -m bench.page_cpu                     # temp SQLite, 500 messages, 100 images
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/chatimg_bench_x \
        .venv/bin/python -m bench.page_cpu --requests 30  # an existing, empty PostgreSQL db
    .venv/bin/python -m bench.page_cpu --profile /tmp/open.prof   # cProfile of the views

The `open` scenario of bench.run measures the page over HTTP, which on a
loaded machine mostly measures the load. This measures what the view costs in
CPU (`time.process_time` of this process around each GET through Django's
test client, with the long chat's session cookie) and counts its statements,
which stays meaningful while other processes share the cores. The first GET is
not measured (it renders and stores the messages' HTML, see
conversations/rendering.py RENDER_VERSION), so the figures are the steady
state of a chat opened before.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import tempfile
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--profile", help="write a cProfile of the measured GETs here")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="chatimg-pagecpu-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatimg.settings")
    if not os.environ.get("DATABASE_URL"):
        os.environ["SQLITE_PATH"] = os.path.join(work, "db.sqlite3")
    os.environ["MEDIA_ROOT"] = os.path.join(work, "media")
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from bench.setup_db import long_chat

    call_command("migrate", verbosity=0, interactive=False)
    info = long_chat(args.messages, args.images)
    name, _, value = info["cookie"].partition("=")
    client = Client()
    client.cookies[name] = value
    url = f"/c/{info['conversation_id']}/"
    first = client.get(url)
    assert first.status_code == 200, first.status_code
    cpu: list[float] = []
    queries: list[int] = []
    # Each statement's wall time (the cursor call: the database's work and the trip).
    statement_ms: dict[str, list[float]] = {}

    def timed(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statement_ms.setdefault(sql[:90], []).append(1000 * (time.perf_counter() - start))

    connection.execute_wrappers.append(timed)
    profiler = cProfile.Profile() if args.profile else None
    for _ in range(args.requests):
        with CaptureQueriesContext(connection) as captured:
            start = time.process_time()
            if profiler:
                profiler.enable()
            response = client.get(url)
            if profiler:
                profiler.disable()
            cpu.append((time.process_time() - start) * 1000)
        assert response.status_code == 200
        queries.append(len(captured.captured_queries))
    if profiler and args.profile:
        profiler.dump_stats(args.profile)
    cpu.sort()
    print(
        json.dumps(
            {
                "database": connection.vendor,
                "messages": info["messages"],
                "images": info["images"],
                "requests": args.requests,
                "queries": sorted(set(queries)),
                "cpu_p50_ms": round(statistics.median(cpu), 1),
                "cpu_p95_ms": round(cpu[int(len(cpu) * 0.95) - 1], 1),
                "page_kib": round(len(response.content) / 1024, 1),
                "statement_p50_ms": {
                    sql: round(statistics.median(times), 2) for sql, times in statement_ms.items()
                },
                "load_average_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
