"""Retrying the storage deletions that failed (models.PendingDeletion), in the background.

Each server process retries what is due every CHATIMG_DELETION_RETRY_SECONDS,
off the event loop and off the ORM thread (storage calls block). `cleanup_images`
reports what is still owed and retries it too (docs/security.md). The same
loop deletes uploads older than CHATIMG_UPLOAD_UNATTACHED_SECONDS that were
never sent with a message.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from conversations.models import Attachment, PendingDeletion

log = logging.getLogger(__name__)


def _retry_once() -> int:
    try:
        # Uploads never sent with a message are owed a deletion too (after a day).
        Attachment.objects.purge_unattached()
        return PendingDeletion.objects.retry_due()
    finally:
        # A thread of the loop's executor, not a database thread: its connection
        # ends with the work. Kept (CONN_MAX_AGE), it sat idle until the process
        # ended, one per executor thread that had run a retry.
        connections.close_all()


async def retry_forever() -> None:
    """The process's retry loop (run by conversations/runtime.py)."""
    while True:
        await asyncio.sleep(settings.DELETION_RETRY_SECONDS)
        try:
            await sync_to_async(_retry_once, thread_sensitive=False)()
        except Exception:
            log.exception("retrying storage deletions failed")
