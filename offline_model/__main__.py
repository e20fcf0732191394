"""The command line: ``python -m offline_model`` serves until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading

from offline_model.server import OfflineModelServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the built-in offline model server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    server = OfflineModelServer(
        args.host,
        args.port,
        token_delay=args.token_delay,
        first_token_delay=args.first_token_delay,
    )
    # SIGTERM as well as Ctrl-C: a process started in the background by a shell
    # has SIGINT ignored, and process managers stop servers with SIGTERM. Set
    # before the address is printed: whoever reads it may stop us at once.
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server.start()
    print(server.base_url, flush=True)
    try:
        stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
