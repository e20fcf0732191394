"""CPU time and SQL statements of a turn's start, in-process (no server, no client).

    .venv/bin/python -m bench.turn_cpu                  # temp SQLite
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/chatimg_bench_x \
        .venv/bin/python -m bench.turn_cpu             # an existing, empty PostgreSQL db

The database work a send does before the model is asked, as the consumer and
the turn do it (conversations/consumers.py `_begin_turn`: credentials, rate
limit, Conversation.objects.start_turn with the history, and the model's
messages, all in one trip to the database thread), for a first message
(new conversation) and a follow-up (an existing one with 20 messages).
Reported per turn start: statements, and CPU ms of this process
(`time.process_time`; min and median of the runs), which stays meaningful
while other processes load the machine (the `crowd` scenario's latency does
not). PostgreSQL's own CPU is not in it; its round trips are in the count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="chatimg-turncpu-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatimg.settings")
    os.environ["CHATIMG_MESSAGES_PER_MINUTE"] = "1000000"  # one user sends them all
    if not os.environ.get("DATABASE_URL"):
        os.environ["SQLITE_PATH"] = os.path.join(work, "db.sqlite3")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from conversations import limits
    from conversations.models import ApiToken, Conversation, Message
    from conversations.turns import Prompt

    call_command("migrate", verbosity=0, interactive=False)
    user = get_user_model().objects.create_user(f"turncpu{uuid.uuid4().hex[:6]}")
    token, _ = ApiToken.issue(user, "bench")
    from conversations.access import Credentials

    credentials = Credentials(user_id=user.pk, token_id=token.pk, session_key=None)

    def start(conversation_id: uuid.UUID | None) -> uuid.UUID:
        # consumers.ChatConsumer._begin_turn: the turn and its model context, one trip.
        credentials.verify()
        limits.count_send(user.pk)
        started = Conversation.objects.start_turn(
            user, conversation_id, uuid.uuid4().hex, "bench tokens=200 delay=0.02 id=x"
        )
        assert started.history is not None
        Prompt.of(started.history)
        # End the answer (not measured) so that the next turn may start.
        Message.objects.filter(pk=started.answer.pk).update(status=Message.Status.COMPLETE)
        return started.conversation.pk

    existing = start(None)
    for _ in range(9):
        start(existing)
    out: dict[str, object] = {"database": connection.vendor, "turns": args.turns}
    for name, target in (("first_message", None), ("follow_up", existing)):
        cpu: list[float] = []
        counts: set[int] = set()
        for _ in range(args.turns):
            with CaptureQueriesContext(connection) as captured:
                began = time.process_time()
                start(target)
                cpu.append((time.process_time() - began) * 1000)
            counts.add(len(captured.captured_queries) - 1)  # the unmeasured UPDATE
            if target is not None:
                # Keep the follow-up's history at 20 messages.
                old = Message.objects.filter(conversation_id=target).order_by("id")[:2]
                Message.objects.filter(pk__in=[m.pk for m in old]).delete()
        statements = [q["sql"][:90] for q in captured.captured_queries[:-1]]
        out[name] = {
            "sql": statements,
            "statements": sorted(counts),
            "cpu_min_ms": round(min(cpu), 2),
            "cpu_p50_ms": round(statistics.median(cpu), 2),
        }

    # The parts of a follow-up's turn start, each timed alone (min / p50 CPU ms).
    def part(function: Callable[[], object]) -> dict[str, float]:
        cpu = []
        for _ in range(args.turns):
            began = time.process_time()
            function()
            cpu.append((time.process_time() - began) * 1000)
        return {"cpu_min_ms": round(min(cpu), 2), "cpu_p50_ms": round(statistics.median(cpu), 2)}

    conversation = Conversation.objects.get(pk=existing)
    out["parts"] = {
        "credentials.verify": part(credentials.verify),
        "history (20 messages)": part(Conversation(pk=existing).history),
        "one message INSERT": part(
            lambda: conversation.messages.create(
                role=Message.Role.USER, text="x", client_message_id=uuid.uuid4().hex
            )
        ),
    }
    out["load_average_1m"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
