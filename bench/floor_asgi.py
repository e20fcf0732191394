"""bench/floor.py's downstream half: a Channels consumer and nothing else, under daphne.

On "go" it sends FLOOR_FRAMES frames shaped like an ``assistant.delta``, one
every FLOOR_DELAY seconds on an absolute schedule, then "end". With
FLOOR_MODE=tick it wakes up as often and sends nothing but the "end".
"""

from __future__ import annotations

import asyncio
import os

import django
from django.conf import settings

if not settings.configured:
    settings.configure(INSTALLED_APPS=[], CHANNEL_LAYERS={})
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer

FRAMES = int(os.environ.get("FLOOR_FRAMES", "500"))
DELAY = float(os.environ.get("FLOOR_DELAY", "0.02"))
SEND = os.environ.get("FLOOR_MODE", "send") == "send"
FRAME = (
    '{"type":"assistant.delta","conversation_id":"0b6c2a51-3f7e-4c1e-9a55-5f2d1c7e8a90",'
    '"message_id":%d,"offset":%d,"text":"w%d "}'
)


class Floor(AsyncWebsocketConsumer):
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.streaming = asyncio.create_task(self.stream())

    async def stream(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        for i in range(FRAMES):
            due += DELAY
            await asyncio.sleep(max(0.0, due - loop.time()))
            if SEND:
                await self.send(text_data=FRAME % (id(self), i * 4, i))
        await self.send(text_data="end")


app = Floor.as_asgi()
