"""Websocket authentication: session cookies for browsers, bearer tokens for programs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AnonymousUser, User
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.http.request import split_domain_port, validate_host
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from conversations.models import ApiToken


class AuthenticatedHttpRequest(HttpRequest):
    """The request of a view behind login_required or session_or_token_required.

    For the type checker only: there request.user is an account, never
    AnonymousUser (the pattern django-stubs documents).
    """

    user: User


def bearer_token(scope: dict[str, Any]) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for name, value in headers:
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
            token = await database_sync_to_async(ApiToken.objects.authenticate_token)(raw)
            scope = {
                **scope,
                "user": token.user if token else AnonymousUser(),
                "auth": "token",
                # The socket re-checks this token while it is open (access.py).
                "api_token_id": token.pk if token else None,
            }
        return await self.app(scope, receive, send)


class BrowserOriginValidator:
    """Check the Origin of cookie-authenticated sockets by scheme, host and port.

    The origin check exists against cross-site websocket hijacking, which
    rides on the browser's cookies. A browser cannot set an Authorization
    header on a websocket, so a bearer-token handshake is not that attack,
    and programs (which send no Origin) must be able to connect.

    Channels' AllowedHostsOriginValidator compares host names only, so a page
    on another port or scheme of the same host passed. Here the Origin must be
    one of settings.WEBSOCKET_ALLOWED_ORIGINS exactly or, when that list is
    empty, the socket's own origin (ws -> http, wss -> https, and the Host
    header, which must be an allowed host). A refusal is daphne's HTTP 403.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if bearer_token(scope) is not None or origin_allowed(scope):
            return await self.app(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def parse_origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, default ports filled in; None if malformed."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host or parts.path not in ("", "/"):
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_allowed(scope: dict[str, Any]) -> bool:
    origin = _header(scope, b"origin")
    theirs = parse_origin(origin) if origin else None
    if theirs is None:
        return False
    configured = settings.WEBSOCKET_ALLOWED_ORIGINS
    if configured:
        return theirs in {parse_origin(item) for item in configured}
    host = _header(scope, b"host") or ""
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    return theirs == parse_origin(f"{scheme}://{host}")


def session_or_token_required(
    view: Callable[..., HttpResponseBase],
) -> Callable[..., HttpResponseBase]:
    """Like login_required, but a program may send its API token instead.

    Used for the image URL, so that the CLI can download what it was shown.
    A bearer header that does not authenticate is a 401, not a login redirect.
    """
    session_view = login_required(view)

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
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


def session_csrf_or_token_required(
    view: Callable[..., HttpResponseBase],
) -> Callable[..., HttpResponseBase]:
    """session_or_token_required for views that change state (the upload).

    A browser (session cookie) must pass Django's CSRF check; a program with
    a bearer token has no cookie a forged page could ride on, so it needs
    none. The middleware's check is skipped (csrf_exempt) and done here, on
    the session path only.
    """
    session_view = csrf_protect(login_required(view))
    token_view = session_or_token_required(view)

    @csrf_exempt
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and raw.strip():
            return token_view(request, *args, **kwargs)
        return session_view(request, *args, **kwargs)

    return wrapper
