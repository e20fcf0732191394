"""How the channel layer's Redis connection pool retries a command whose connection broke.

channels-redis builds a bare asyncio connection pool, and a bare pool's
connections retry nothing (redis-py's default of 3 retries is the client's,
not the pool's), nor does the asyncio pool check a connection when it hands
it out. After a Redis restart every connection pooled before it is dead, and
the first PUBLISH on each failed ("Connection closed by server"): a send
refused with `internal_error`, an answer's announcement to the other
processes lost. With this retry a command reconnects and is retried a few
times, briefly (well under a second while Redis is up), before the error
reaches its caller. (Django's Redis cache needs none: redis-py's synchronous
pool checks a connection as it hands it out and reconnects a dead one.)
"""

from __future__ import annotations

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

RETRIES = 3


def async_retry() -> Retry:
    """For the channel layer's asyncio pool (a new one per use: a pool copies it anyway)."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES)
