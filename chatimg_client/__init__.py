"""chatimg-client: the chat from a terminal, over the public websocket protocol.

The answer streams to stdout; progress, saved images and the conversation id go
to stderr, so ``> answer.txt`` captures just the text. See docs/client.md.
Django is not imported: this runs anywhere ``websockets`` and ``httpx2`` are
installed.
"""

from chatimg_client.session import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAUTHENTICATED,
    EXIT_USAGE,
    ChatSession,
    run,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNAUTHENTICATED",
    "EXIT_USAGE",
    "ChatSession",
    "run",
]
