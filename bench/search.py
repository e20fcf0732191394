"""Search over a large history: p50/p95 of conversations.search.search on both stacks.

    .venv/bin/python -m bench.search --config sqlite          # temp SQLite file
    SQLITE_PATH=/tmp/bench-search-…/db .venv/bin/python -m bench.search   # reuse it
    .venv/bin/python -m bench.search --config postgres --pg-db chatimg_search

One user owns N conversations (default 10,000) of 4 messages each (about 60
words per answer drawn from a 5,000-word vocabulary, Zipf-like), and a second
user as many again, so that the owner filter has work to do. Each query is run
`--runs` times in this process (the function the view calls: the matching
query and the snippet query, with Python's snippet building); the first run
of each is a warm-up and not counted. What it cannot see: HTTP and the
template (a few ms, the same for any history size).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def setup(config: str, pg_db: str, reuse: bool) -> None:
    os.environ.pop("REDIS_URL", None)
    if config == "postgres":
        import psycopg

        if not reuse:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {pg_db}")
                conn.execute(f"CREATE DATABASE {pg_db}")
        os.environ["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{pg_db}"
    else:
        os.environ.pop("DATABASE_URL", None)
        if not os.environ.get("SQLITE_PATH"):  # given: a file seeded by a last run
            os.environ["SQLITE_PATH"] = str(Path(tempfile.mkdtemp(prefix="bench-search-")) / "db")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatimg.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def vocabulary(size: int, rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 10))))
    return sorted(words)


def seed(conversations: int, rng: random.Random) -> tuple[Any, list[str]]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from conversations.models import Conversation, Message

    words = vocabulary(5000, rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf: a few very common words
    users = [get_user_model().objects.create_user(name) for name in ("owner", "other")]
    for user in users:
        for start in range(0, conversations, 1000):
            with transaction.atomic():
                batch = [
                    Conversation(user=user, title=" ".join(rng.choices(words, weights, k=4)))
                    for _ in range(min(1000, conversations - start))
                ]
                Conversation.objects.bulk_create(batch)
                messages = []
                for conversation in batch:
                    for number in range(4):
                        length = 12 if number % 2 == 0 else 60
                        messages.append(
                            Message(
                                conversation=conversation,
                                role="user" if number % 2 == 0 else "assistant",
                                text=" ".join(rng.choices(words, weights, k=length)),
                            )
                        )
                Message.objects.bulk_create(messages)
    return users[0], words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-db", default="chatimg_search")
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--reuse", action="store_true", help="PostgreSQL: keep the database seeded by a last run"
    )
    args = parser.parse_args()
    setup(args.config, args.pg_db, args.reuse and args.config == "postgres")
    from django.db import connection

    from conversations import search

    rng = random.Random(15)
    started = time.perf_counter()
    from django.contrib.auth import get_user_model

    owner = get_user_model().objects.filter(username="owner").first()
    if owner is not None:
        words = vocabulary(5000, rng)  # the same words as the run that seeded it
    else:
        owner, words = seed(args.conversations, rng)
    if connection.vendor == "postgresql":
        # What autovacuum does on a live database: statistics, and the GIN
        # pending list merged into the index (fastupdate; until then every
        # search reads the pending list through).
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    seconds = time.perf_counter() - started
    print(f"ready: {args.conversations:,} conversations x 2 users, {seconds:.0f} s")
    print(f"backend: {search.backend_name()}; load: {os.getloadavg()}")
    queries = {
        "common word": words[0],
        "mid word": words[200],
        "rare word": words[4000],
        "two words": f"{words[3]} {words[40]}",
        "3-letter prefix": words[10][:3],
        "no match": "zzzzzzzzzz",
    }
    everything: list[float] = []
    rows = []
    for name, query in queries.items():
        times = []
        for run in range(args.runs + 1):
            began = time.perf_counter()
            hits = search.search(owner, query)
            elapsed = (time.perf_counter() - began) * 1000
            if run:
                times.append(elapsed)
        everything += times
        times.sort()
        p95 = times[int(len(times) * 0.95) - 1]
        rows.append((name, query, len(hits), statistics.median(times), p95))
    print("\n| query | q | results | p50 ms | p95 ms |\n| --- | --- | --- | --- | --- |")
    for name, query, count, p50, p95 in rows:
        print(f"| {name} | `{query}` | {count} | {p50:.1f} | {p95:.1f} |")
    everything.sort()
    print(
        f"| **all** | | | {statistics.median(everything):.1f} | "
        f"{everything[int(len(everything) * 0.95) - 1]:.1f} |"
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            sql, params = (
                search._PostgresMatcher([words[4000]]).messages().values("conversation").query
            ).sql_with_params()
            cursor.execute("EXPLAIN " + sql, params)
            print("\nmessage match plan:\n" + "\n".join(row[0] for row in cursor.fetchall()))


if __name__ == "__main__":
    sys.exit(main())
