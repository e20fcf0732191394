"""daphne on uvloop's event loop: a what-if of issue 12 (`BENCH_UVLOOP=1`).

The loop policy must be set before daphne imports Twisted's asyncio reactor
(daphne.server makes its loop at import), so this wraps daphne's own command line.
"""

import asyncio

import uvloop

asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

from daphne.cli import CommandLineInterface  # noqa: E402  (after the policy)

if __name__ == "__main__":
    CommandLineInterface.entrypoint()
