"""Exit 0 when both PostgreSQL and Redis answer at the given URLs (used by scripts/test)."""

import socket
import sys
from urllib.parse import urlparse

import psycopg


def postgres_up(url: str) -> bool:
    parts = urlparse(url)
    try:
        # The server database, not the one under test: pytest-django creates that.
        with psycopg.connect(
            host=parts.hostname,
            port=parts.port or 5432,
            user=parts.username,
            password=parts.password,
            dbname="postgres",
            connect_timeout=3,
        ):
            return True
    except psycopg.Error as exc:
        print(f"PostgreSQL: {exc}".strip())
        return False


def redis_up(url: str) -> bool:
    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=3) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError as exc:
        print(f"Redis: {exc}")
        return False


if __name__ == "__main__":
    database_url, redis_url = sys.argv[1], sys.argv[2]
    sys.exit(0 if postgres_up(database_url) and redis_up(redis_url) else 1)
