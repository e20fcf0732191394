"""Close answers whose process died mid-turn: at start-up (make run) and by hand."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from conversations import streams
from conversations.models import Message


class Command(BaseCommand):
    help = (
        "Mark answers whose process died mid-turn as interrupted, keeping their last text. "
        "Without Redis (one process: the embedded stack) every answer still streaming is "
        "closed, since none can be running before the server starts; with Redis, only "
        "those with a stale heartbeat."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stale-only",
            action="store_true",
            help="close only answers with a stale heartbeat, even without Redis",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alone = not settings.REDIS_URL and not options["stale_only"]
        closed = Message.objects.mark_stale_interrupted(
            all_streaming=alone, text_of=streams.recovered_text
        )
        self.stdout.write(f"{len(closed)} interrupted answer(s) closed.")
