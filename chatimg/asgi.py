"""ASGI entry point: HTTP through Django, websockets through Channels."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatimg.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from conversations.auth import BrowserOriginValidator, TokenAuthMiddleware  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": BrowserOriginValidator(
            AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)

# What start-up built (modules, settings, URL patterns, templates) lives as long
# as the process: keep it out of the garbage collector's full passes, which
# otherwise stall every socket's event loop for 65-175 ms under load (bench/).
# A higher first threshold trades a little memory for far fewer young passes
# over the short-lived tasks and dicts of streaming.
gc.collect()
gc.freeze()
gc.set_threshold(50_000, 20, 100)
