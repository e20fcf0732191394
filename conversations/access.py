"""Whether an open socket's credentials still hold, and telling sockets when they stop.

A socket authenticates once, at its handshake; its credentials can end later:
a logout, a password change in another session, an account made inactive or
deleted, an API token revoked, a session expiring. Two mechanisms close such
sockets (docs/security.md):

- Events, at once and across processes: every socket joins its user's group on
  the channel layer; the signal handlers below group_send `access.revoke` (the
  affected sockets close without a database trip) or `access.recheck` (each
  socket re-reads its own credentials). A password change ends every other
  session; the one that made it gets a new session key (Django's
  update_session_auth_hash), so its pages reconnect with the new cookie.
- A periodic re-check per socket (CHATIMG_ACCESS_RECHECK_SECONDS), for what no
  signal announces: session expiry, `QuerySet.update(is_active=False)`, a lost
  event. Starting a turn re-checks in the same trip to the ORM thread, so a
  revoked credential never starts new work.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model, user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils.crypto import constant_time_compare

from conversations import protocol
from conversations.models import ApiToken

log = logging.getLogger(__name__)

ACCOUNT_ENDED = "Your account is no longer active."
TOKEN_REVOKED = "This API token was revoked; create a new one at /tokens/."  # noqa: S105
SESSION_ENDED = "Your session ended; log in again."
PASSWORD_CHANGED = "The password was changed; log in again."  # noqa: S105


def user_group(user_id: Any) -> str:
    return f"access.user.{user_id}"


def session_digest(session_key: str) -> str:
    """What travels on the channel layer instead of the session key itself."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


class AccessEnded(Exception):
    """The socket's credentials no longer hold; `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Credentials:
    """What a socket authenticated with: a session (browsers) or an API token."""

    user_id: Any
    session_key: str | None = None
    token_id: int | None = None

    @classmethod
    def of(cls, scope: dict[str, Any]) -> Credentials:
        user = scope["user"]
        if scope.get("auth") == "token":
            return cls(user.pk, token_id=scope.get("api_token_id"))
        session = scope.get("session")
        return cls(user.pk, session_key=getattr(session, "session_key", None))

    def matches(self, event: dict[str, Any]) -> bool:
        """Whether an access.revoke event is about these credentials."""
        if "session" in event:
            return self.session_key is not None and event["session"] == session_digest(
                self.session_key
            )
        if "token" in event:
            token: object = event["token"]
            return self.token_id == token
        return True  # the whole account

    def verify(self) -> None:
        """Raise AccessEnded unless the credentials still hold (ORM; one query for a
        token, two for a session: its user, and the session unless it is cached)."""
        if self.token_id is not None:
            # One query for a token: the token and its user's state together.
            state = (
                ApiToken.objects.filter(pk=self.token_id, user_id=self.user_id)
                .values_list("revoked_at", "user__is_active")
                .first()
            )
            if state is None:
                # The token is gone: with its account (a cascade), or by itself.
                gone = not get_user_model().objects.filter(pk=self.user_id, is_active=True).exists()
                raise AccessEnded(ACCOUNT_ENDED if gone else TOKEN_REVOKED)
            revoked_at, active = state
            if not active:
                raise AccessEnded(ACCOUNT_ENDED)
            if revoked_at is not None:
                raise AccessEnded(TOKEN_REVOKED)
            return
        user = get_user_model().objects.filter(pk=self.user_id).first()
        if user is None or not user.is_active:
            raise AccessEnded(ACCOUNT_ENDED)
        if self.session_key is None:
            raise AccessEnded(SESSION_ENDED)
        # load() answers {} for a session that is gone or expired.
        data = import_module(settings.SESSION_ENGINE).SessionStore(self.session_key).load()
        if str(data.get(SESSION_KEY)) != str(user.pk):
            raise AccessEnded(SESSION_ENDED)
        if not _hash_verified(data.get(HASH_SESSION_KEY) or "", user):
            raise AccessEnded(PASSWORD_CHANGED)


def _hash_verified(session_hash: str, user: Any) -> bool:
    """As django.contrib.auth.get_user checks it (with SECRET_KEY_FALLBACKS)."""
    if constant_time_compare(session_hash, user.get_session_auth_hash()):
        return True
    fallbacks = getattr(user, "get_session_auth_fallback_hash", None)
    return fallbacks is not None and any(
        constant_time_compare(session_hash, fallback) for fallback in fallbacks()
    )


# --- announcing changes ---------------------------------------------------------


def announce(user_id: Any, event: dict[str, Any]) -> None:
    """group_send to the user's sockets once the change is committed.

    Best effort: a lost event is caught by the sockets' periodic re-check.
    """

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(user_group(user_id), event)
        except Exception:  # e.g. called on a running event loop's thread, Redis down
            log.warning("could not announce %s to user %s's sockets", event["type"], user_id)

    transaction.on_commit(send)


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is not None and session_key:
        announce(
            user.pk,
            {
                "type": "access.revoke",
                "session": session_digest(session_key),
                "message": SESSION_ENDED,
            },
        )


@receiver(post_save)
def _user_saved(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    if sender is not get_user_model():
        return
    # Logins save last_login alone: nothing about access changed.
    if update_fields is not None and not {"password", "is_active"} & set(update_fields):
        return
    if not instance.is_active:
        announce(instance.pk, {"type": "access.revoke", "message": ACCOUNT_ENDED})
    else:  # perhaps a new password: each socket compares its session's hash
        announce(instance.pk, {"type": "access.recheck"})


@receiver(post_delete)
def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    if sender is get_user_model():
        announce(instance.pk, {"type": "access.revoke", "message": ACCOUNT_ENDED})


@receiver(post_save, sender=ApiToken)
def _token_saved(sender: Any, instance: ApiToken, **kwargs: Any) -> None:
    if instance.revoked_at is not None:
        announce(
            instance.user_id,
            {"type": "access.revoke", "token": instance.pk, "message": TOKEN_REVOKED},
        )


@receiver(post_delete, sender=ApiToken)
def _token_deleted(sender: Any, instance: ApiToken, **kwargs: Any) -> None:
    announce(
        instance.user_id, {"type": "access.revoke", "token": instance.pk, "message": TOKEN_REVOKED}
    )


class EndsWithAccess:
    """A consumer mixin: the socket closes (4401, a typed error) when its credentials end.

    The consumer sets `self.credentials` at connect, calls `start_watching()`,
    and handles `AccessEnded` from its frame handlers with `end_access`.
    """

    credentials: Credentials
    access_ended = False
    _access_watch: asyncio.Task[None] | None = None

    def start_watching(self) -> None:
        self._access_watch = asyncio.create_task(self._watch_access())

    def stop_watching(self) -> None:
        if self._access_watch is not None:
            self._access_watch.cancel()

    async def _watch_access(self) -> None:
        """Re-check the credentials now and then: session expiry sends no event."""
        period = settings.ACCESS_RECHECK_SECONDS
        # The first check at a random point of the period spreads a crowd's checks.
        await asyncio.sleep(period * random.uniform(0.5, 1.0))
        while not self.access_ended:
            try:
                await database_sync_to_async(self.credentials.verify)()
            except AccessEnded as exc:
                await self.end_access(exc.message)
                return
            except Exception:
                log.exception("could not re-check a socket's credentials")
            await asyncio.sleep(period)

    async def access_revoke(self, event: dict[str, Any]) -> None:
        if self.credentials.matches(event):
            await self.end_access(event.get("message") or SESSION_ENDED)

    async def access_recheck(self, event: dict[str, Any]) -> None:
        try:
            await database_sync_to_async(self.credentials.verify)()
        except AccessEnded as exc:
            await self.end_access(exc.message)

    async def end_access(self, message: str) -> None:
        """Tell the client why, then close with 4401 (log in again)."""
        if self.access_ended:
            return
        self.access_ended = True
        await self.send(protocol.error("unauthenticated", message))  # type: ignore[attr-defined]
        await self.close(code=4401)  # type: ignore[attr-defined]
