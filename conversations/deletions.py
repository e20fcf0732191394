"""Retrying the storage deletions that failed (models.PendingDeletion), in the background.

Each process with sockets retries what is due every CHATIMG_DELETION_RETRY_SECONDS,
off the event loop and off the ORM thread (storage calls block). `cleanup_images`
reports what is still owed and retries it too (docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from conversations.models import PendingDeletion

log = logging.getLogger(__name__)

_retriers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]]
_retriers = weakref.WeakKeyDictionary()


def ensure_retrier() -> None:
    """Start this process's retry loop (once per event loop)."""
    loop = asyncio.get_running_loop()
    if loop not in _retriers:
        _retriers[loop] = loop.create_task(_retry_forever())


def _retry_once() -> int:
    try:
        return PendingDeletion.objects.retry_due()
    finally:
        close_old_connections()  # this worker thread's connection must not go stale


async def _retry_forever() -> None:
    while True:
        await asyncio.sleep(settings.DELETION_RETRY_SECONDS)
        try:
            await sync_to_async(_retry_once, thread_sensitive=False)()
        except Exception:
            log.exception("retrying storage deletions failed")
