from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "chatimg-demo"  # noqa: S105 (development mode only, printed on purpose)


class Command(BaseCommand):
    help = "Create the demo login (development mode only) when no user exists yet."

    def handle(self, *args: object, **options: object) -> None:
        if not settings.DEBUG:
            raise CommandError("The demo account exists only in development (DJANGO_DEBUG=1).")
        users = get_user_model().objects
        if not users.filter(username=DEMO_USERNAME).exists():
            # Staff too, so that the admin's image review can be tried at once.
            users.create_superuser(DEMO_USERNAME, "", DEMO_PASSWORD)
            self.stdout.write("Created the demo account.")
        self.stdout.write(
            f"Log in at http://127.0.0.1:8000/ as {DEMO_USERNAME} / {DEMO_PASSWORD} "
            "(also staff: /admin/)"
        )
