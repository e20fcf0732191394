from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

from django.core.files.storage import Storage, default_storage
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from conversations.models import GeneratedImage, PendingDeletion

PREFIX = "images"


def stored_keys(storage: Storage, folder: str = PREFIX) -> set[str]:
    """Every object key under `folder`, for local folders and buckets alike."""
    try:
        folders, files = storage.listdir(folder)
    except FileNotFoundError:
        return set()
    keys = {f"{folder}/{name}" for name in files}
    for sub in folders:
        keys |= stored_keys(storage, f"{folder}/{sub}")
    return keys


class Command(BaseCommand):
    help = (
        "Find image objects without a row and rows without an object, and remove them. "
        "Dry run unless --apply is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--apply", action="store_true", help="delete what is found")
        parser.add_argument(
            "--min-age",
            type=int,
            default=600,
            help="seconds an object must have existed to count as an orphan (default 600): "
            "a turn uploads the object a moment before it writes the row",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        apply = options["apply"]
        verb = "Deleting" if apply else "Would delete"
        # Deletions that storage refused: owed, recorded, retried (models.PendingDeletion).
        # Reported first: they matter most when storage is down.
        pending = list(PendingDeletion.objects.order_by("created_at"))
        for record in pending:
            self.stdout.write(
                f"{'Retrying' if apply else 'Pending'} deletion of {record.key} "
                f"({record.attempts} failed attempt(s); last: {record.last_error or '-'})"
            )
        try:
            objects = stored_keys(default_storage)
        except Exception as exc:
            raise CommandError(
                f"Storage cannot be listed ({exc}); {len(pending)} pending deletion(s)."
            ) from exc
        rows: dict[str, list[Any]] = defaultdict(list)  # identical bytes share a key
        for key, image_id in GeneratedImage.objects.values_list("file", "id").order_by():
            rows[key].append(image_id)
        still_owed = (
            PendingDeletion.objects.settle([r.key for r in pending]) if apply else len(pending)
        )
        owed_keys = {record.key for record in pending}
        cutoff = timezone.now() - timedelta(seconds=options["min_age"])
        orphans = sorted(
            key
            for key in objects - set(rows) - owed_keys
            if default_storage.get_modified_time(key) <= cutoff
        )
        for key in orphans:
            self.stdout.write(f"{verb} object without a row: {key}")
            if apply:
                default_storage.delete(key)
        missing = sorted(key for key in rows if key not in objects)
        missing_rows = sum(len(rows[key]) for key in missing)
        for key in missing:
            for image_id in rows[key]:
                self.stdout.write(f"{verb} row without an object: image {image_id} ({key})")
                if apply:
                    self._drop_row(image_id)
        self.stdout.write(
            f"{len(orphans)} object(s) without a row, {missing_rows} row(s) without an object, "
            f"{still_owed} pending deletion(s)"
            + ("." if apply else " (dry run: nothing deleted; use --apply).")
        )

    @staticmethod
    def _drop_row(image_id: Any) -> None:
        image = GeneratedImage.objects.select_related("tool_invocation").get(pk=image_id)
        # The chat then shows a failed card instead of a broken image.
        image.tool_invocation.fail("The image is no longer available.")
        image.delete()
