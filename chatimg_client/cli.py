"""chatimg-client's command line: arguments in, an exit code out.

chatimg-client --token cit_… "draw a lighthouse at dusk"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import NoReturn

from chatimg_client.branches import run_branch
from chatimg_client.session import (
    DEFAULT_IMAGES_DIR,
    DEFAULT_URL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    run,
    websocket_url,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="chatimg-client",
        description="Ask chatimg from the terminal: the answer streams to stdout, "
        "images are saved to a folder.",
    )
    parser.add_argument("prompt", nargs="*", help="the message (default: read from stdin)")
    parser.add_argument(
        "--url",
        default=os.environ.get("CHATIMG_URL", DEFAULT_URL),
        help="the app's base URL (env CHATIMG_URL; default %(default)s)",
    )
    parser.add_argument("--token", help="a personal API token (env CHATIMG_TOKEN)")
    parser.add_argument(
        "--conversation", type=uuid.UUID, help="continue this conversation (default: a new one)"
    )
    parser.add_argument(
        "--images-dir",
        type=Path,
        default=Path(DEFAULT_IMAGES_DIR),
        help="where to save images (default: ./%(default)s)",
    )
    parser.add_argument(
        "--attach",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="attach an image (PNG, JPEG, WebP, GIF) to the message; repeatable",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the raw frames, one per line, instead"
    )
    parser.add_argument(
        "--continue",
        dest="continue_answer",
        action="store_true",
        help="carry on the conversation's last answer where it stopped at the model's "
        "length limit (needs --conversation; no prompt)",
    )
    branch = parser.add_argument_group("versions (edit and branch; all need --conversation)")
    branch.add_argument(
        "--edit-last",
        action="store_true",
        help="send the prompt as a new version of your last message: a new branch, answered",
    )
    branch.add_argument(
        "--versions",
        action="store_true",
        help="list the active branch: each message's id, and its versions (no prompt)",
    )
    branch.add_argument(
        "--switch",
        type=int,
        metavar="ID",
        help="make the version ID (an id from --versions) the active one (no prompt)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    token = args.token or os.environ.get("CHATIMG_TOKEN", "")
    if not token:
        parser.error("no API token: pass --token or set CHATIMG_TOKEN")
    try:
        websocket_url(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    conversation = str(args.conversation) if args.conversation else None
    if (args.versions or args.switch is not None or args.edit_last) and not conversation:
        parser.error("--edit-last, --versions and --switch need --conversation")
    if args.versions or args.switch is not None:
        if args.prompt:
            parser.error("--versions and --switch take no prompt")
        assert conversation is not None
        return asyncio.run(
            run_branch(
                url=args.url, token=token, conversation_id=conversation, switch_to=args.switch
            )
        )
    if args.continue_answer:
        if not conversation:
            parser.error("--continue needs --conversation")
        if args.prompt:
            parser.error("--continue takes no prompt")
        if args.attach:
            parser.error("--continue takes no --attach")
        return asyncio.run(
            run(
                "",
                url=args.url,
                token=token,
                conversation_id=conversation,
                images_dir=args.images_dir,
                raw=args.json,
                continue_answer=True,
            )
        )
    if not args.prompt and sys.stdin.isatty():
        print("Type the message, then Ctrl-D:", file=sys.stderr)
    prompt = (" ".join(args.prompt) if args.prompt else sys.stdin.read()).strip()
    if not prompt:
        parser.error("no prompt: pass it as an argument or on stdin")
    try:
        return asyncio.run(
            run(
                prompt,
                url=args.url,
                token=token,
                conversation_id=conversation,
                images_dir=args.images_dir,
                raw=args.json,
                attach=args.attach,
                edit=args.edit_last,
            )
        )
    except KeyboardInterrupt:
        # Closing the socket does not stop the answer; it can be picked up in the browser.
        print("\n[interrupted; the answer goes on on the server]", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
