"""ASGI entry point: HTTP through Django, websockets through Channels."""

import gc
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatimg.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from conversations import runtime  # noqa: E402
from conversations.auth import BrowserOriginValidator, TokenAuthMiddleware  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402

router = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": BrowserOriginValidator(
            AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The router, once this process's runtime is up (conversations/runtime.py).

    daphne speaks no ASGI lifespan, so the runtime starts with the server's
    first scope of any kind (a health check will do) and stops when the
    server shuts down (runtime.start registers that with daphne's reactor).
    """
    await runtime.start()
    await router(scope, receive, send)


# What start-up built (modules, settings, URL patterns, templates) lives as long
# as the process: freeze it, so that the collector's passes never walk it again.
# Full passes are made rare (one per 2,000 young ones instead of 100): with
# hundreds of streams each was a 25-40 ms stall of every socket (bench/). The
# young threshold stays CPython's 700: short, frequent passes beat long ones
# (a threshold of 50,000 made 15-35 ms pauses).
gc.collect()
gc.freeze()
gc.set_threshold(700, 20, 100)
