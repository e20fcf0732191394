from django.core.management.base import BaseCommand

from conversations.models import Message


class Command(BaseCommand):
    help = "Mark answers whose process died mid-turn (stale heartbeat) as interrupted."

    def handle(self, *args: object, **options: object) -> None:
        closed = Message.objects.mark_stale_interrupted()
        self.stdout.write(f"{len(closed)} interrupted answer(s) closed.")
