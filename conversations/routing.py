"""The websocket route: one socket at /ws/chat/ for protocol v1."""

from django.urls import path

from conversations.consumers import ChatConsumer

websocket_urlpatterns = [path("ws/chat/", ChatConsumer.as_asgi())]
