"""Websocket authentication: session cookies for browsers, bearer tokens for programs."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse

from conversations.models import ApiToken


def bearer_token(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class TokenAuthMiddleware:
    """Use the API token's user when the handshake carries `Authorization: Bearer`.

    A bad or revoked token means anonymous (the consumer then closes with
    4401), never a fall-back to a session cookie sent alongside.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        raw = bearer_token(scope)
        if raw is not None:
            user = await database_sync_to_async(ApiToken.objects.authenticate)(raw)
            scope = {**scope, "user": user or AnonymousUser(), "auth": "token"}
        return await self.app(scope, receive, send)


class BrowserOriginValidator:
    """Check the Origin of cookie-authenticated sockets only.

    The origin check exists against cross-site websocket hijacking, which
    rides on the browser's cookies. A browser cannot set an Authorization
    header on a websocket, so a bearer-token handshake is not that attack,
    and programs (which send no Origin) must be able to connect.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.validated = AllowedHostsOriginValidator(app)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if bearer_token(scope) is not None:
            return await self.app(scope, receive, send)
        return await self.validated(scope, receive, send)


def session_or_token_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Like login_required, but a program may send its API token instead.

    Used for the image URL, so that the CLI can download what it was shown.
    A bearer header that does not authenticate is a 401, not a login redirect.
    """
    session_view = login_required(view)

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        header = request.headers.get("Authorization", "")
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            return session_view(request, *args, **kwargs)
        user = ApiToken.objects.authenticate(raw.strip())
        if user is None:
            response = HttpResponse("Invalid or revoked API token.", status=401)
            response["WWW-Authenticate"] = "Bearer"
            return response
        request.user = user
        return view(request, *args, **kwargs)

    return wrapper
