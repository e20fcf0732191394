"""Which process this is, and which others are alive: the instance id and its lease.

Every answer records the instance that runs it (`Message.owner`). With Redis,
each process keeps a short lease alive (a key with a TTL, renewed well within
it; its value is the process's control channel), so that any process can tell
an answer whose owner died from one whose owner is merely quiet, within
seconds, without waiting for a stale checkpoint. Without Redis there is one
process: what it does not run is not running anywhere.

Timing (docs/deployment.md): the lease lives LEASE_SECONDS and is renewed every
RENEW_SECONDS; every process sweeps every SWEEP_SECONDS. An owner killed right
after a renewal is closed LEASE_SECONDS + SWEEP_SECONDS later at worst (8 s).
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import socket
import weakref
from collections.abc import Iterable
from typing import Any

from django.conf import settings

LEASE_SECONDS = 6.0
RENEW_SECONDS = 2.0
SWEEP_SECONDS = 2.0

#: This process: host, pid and a random part (a pid is reused after a restart).
INSTANCE = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def current() -> str:
    """The instance id of this process (the default owner of an answer it creates)."""
    return INSTANCE


class Leases:
    """The leases of the running processes, in Redis."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]
        self._clients = weakref.WeakKeyDictionary()

    @property
    def redis(self) -> Any:
        import redis.asyncio

        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            # Short timeouts: a Redis that is away must not hold up a sweep or a Stop.
            self._clients[loop] = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=2, socket_connect_timeout=2
            )
        return self._clients[loop]

    def key(self, instance: str) -> str:
        return f"{self.prefix}:lease:{instance}"

    async def renew(self, channel: str) -> None:
        await self.redis.set(self.key(INSTANCE), channel, px=int(LEASE_SECONDS * 1000))

    async def release(self) -> None:
        await self.redis.delete(self.key(INSTANCE))

    async def channels(self, instances: Iterable[str]) -> dict[str, str | None]:
        """Each instance's control channel, or None when its lease has lapsed."""
        wanted = list(instances)
        if not wanted:
            return {}
        found = await self.redis.mget([self.key(instance) for instance in wanted])
        return {
            instance: value.decode() if value is not None else None
            for instance, value in zip(wanted, found, strict=True)
        }

    async def trustworthy(self) -> bool:
        """Whether a missing lease means a dead owner: not in the first seconds
        after Redis itself (re)started and lost every lease, before the living
        processes renewed theirs."""
        info = await self.redis.info("server")
        return int(info.get("uptime_in_seconds", 0)) > LEASE_SECONDS + RENEW_SECONDS


def leases() -> Leases | None:
    """The configured stack's leases; None without Redis (one process)."""
    if not settings.REDIS_URL:
        return None
    return _leases(settings.REDIS_URL, settings.REDIS_PREFIX)


@functools.cache
def _leases(url: str, prefix: str) -> Leases:
    return Leases(url, prefix)
