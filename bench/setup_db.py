"""Migrate the bench database and create users with one API token each.

    DJANGO_SETTINGS_MODULE=chatimg.settings SQLITE_PATH=... \
        .venv/bin/python -m bench.setup_db --users 400 --out tokens.json

Run by bench.run with the same environment as the server it then starts.
"""

from __future__ import annotations

import argparse
import json
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatimg.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import transaction

    from conversations.models import ApiToken

    call_command("migrate", verbosity=0, interactive=False)
    user_model = get_user_model()
    tokens = []
    with transaction.atomic():
        for i in range(args.users):
            user, _ = user_model.objects.get_or_create(username=f"bench{i:04d}")
            _, raw = ApiToken.issue(user, "bench")
            tokens.append(raw)
    with open(args.out, "w") as out:
        json.dump(tokens, out)


if __name__ == "__main__":
    main()
