"""The processes a benchmark measures: the recording fake and one or two daphne processes.

Two daphne processes share the database and the Redis channel layer and sit
behind no balancer: the load client spreads its sockets over them itself.

Each runs as a subprocess (never in the load client's process), on a free
loopback port, with its own temporary database and media folder, and is stopped
by pid when the benchmark ends (also on error or Ctrl-C).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import free_port, wait_port

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Overridable (bench.run --pg-db / --redis-url) so that two people can bench at once.
PG_DB = os.environ.get("BENCH_PG_DB", "chatimg_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")  # away from tests' 0

_SCRUB_PREFIXES = ("OPENAI_", "CHATIMG_", "S3_", "DJANGO_")
_SCRUB = {"DATABASE_URL", "REDIS_URL", "SQLITE_PATH", "MEDIA_ROOT", "LOG_LEVEL"}


def _stop(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@dataclass
class Stack:
    db: str = "sqlite"  # or "postgres"
    layer: str = "memory"  # or "redis"
    pin: bool = False  # daphne on CPU 0, fake and client on CPU 1
    keep: bool = False  # keep the work dir (logs) at the end
    extra_env: dict[str, str] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="chatimg-bench-")))
    fake: subprocess.Popen[bytes] | None = None
    # The daphne processes (one or two); `app` and `app_port` are the first.
    apps: list[subprocess.Popen[bytes]] = field(default_factory=list)
    app_ports: list[int] = field(default_factory=list)
    pg_db: str = PG_DB
    redis_url: str = REDIS_URL
    fake_url: str = ""
    tokens: list[str] = field(default_factory=list)
    _app_runs: int = 0
    # One channel-layer prefix per stack, so that stop() can delete exactly its keys.
    redis_prefix: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}")

    # --- environment ---------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _SCRUB and not k.startswith(_SCRUB_PREFIXES)
        }
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "bench.settings",
                "DJANGO_DEBUG": "0",
                "DJANGO_SECRET_KEY": "bench-" + "x" * 50,
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "MEDIA_ROOT": str(self.workdir / "media"),
                "OPENAI_API_KEY": "sk-bench",
                "OPENAI_BASE_URL": self.fake_url,
                "CHATIMG_MESSAGES_PER_MINUTE": "1000000",
                "CHATIMG_FRAMES_PER_10S": "1000000",
                "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.db == "postgres":
            env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{self.pg_db}"
        else:
            env["SQLITE_PATH"] = str(self.workdir / "db.sqlite3")
        # The image scenario makes 30+ images per user; the default day's allowance is 50.
        env["CHATIMG_IMAGES_PER_DAY"] = "100000"
        if self.layer == "redis":
            env["REDIS_URL"] = self.redis_url
            env["CHATIMG_CHANNEL_PREFIX"] = self.redis_prefix
        env.update(self.extra_env)
        # What-if settings: BENCH_APP_CHATIMG_STREAM_COALESCE_MS=60 reaches the
        # app as CHATIMG_STREAM_COALESCE_MS=60.
        env.update({k[10:]: v for k, v in os.environ.items() if k.startswith("BENCH_APP_")})
        return env

    def label(self) -> str:
        db = "PostgreSQL" if self.db == "postgres" else "SQLite"
        layer = "Redis layer" if self.layer == "redis" else "in-memory layer"
        return f"{db} + {layer}"

    # --- lifecycle -----------------------------------------------------------

    def start_fake(self, token_delay: float = 0.02) -> None:
        ready = self.workdir / "fake.url"
        cmd = [PYTHON, "-m", "bench.fake", "--port", "0", "--token-delay", str(token_delay)]
        cmd += ["--ready-file", str(ready), "--max-seconds", "7200"]
        if self.pin:
            cmd = ["taskset", "-c", "1", *cmd]
        log = open(self.workdir / "fake.log", "wb")  # noqa: SIM115
        self.fake = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.fake.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fake did not start; see {self.workdir / 'fake.log'}")
            time.sleep(0.05)
        self.fake_url = ready.read_text().strip()

    def prepare_db(self, users: int) -> None:
        if self.db == "postgres":
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self.pg_db} WITH (FORCE)")
                conn.execute(f"CREATE DATABASE {self.pg_db}")
        out = self.workdir / "tokens.json"
        subprocess.run(
            [PYTHON, "-m", "bench.setup_db", "--users", str(users), "--out", str(out)],
            cwd=REPO,
            env=self.env(),
            check=True,
            timeout=300,
        )
        self.tokens = json.loads(out.read_text())

    def prepare_long_chat(self, messages: int, images: int) -> dict[str, Any]:
        """One user's conversation of `messages` messages with `images` stored images."""
        out = self.workdir / "long.json"
        cmd = [PYTHON, "-m", "bench.setup_db", "--users", "0", "--out", str(self.workdir / "t0")]
        cmd += ["--long-chat", str(messages), "--long-images", str(images), "--long-out", str(out)]
        subprocess.run(cmd, cwd=REPO, env=self.env(), check=True, timeout=300)
        return json.loads(out.read_text())

    def start_app(self, processes: int = 1) -> None:
        """Fresh daphne processes (the database is kept).

        Pinned, process i runs on CPU i % 2 (one process: alone on CPU 0; the fake
        and the client are on CPU 1 either way).
        """
        if processes > 1 and self.layer != "redis":
            raise ValueError("two daphne processes need the Redis channel layer")
        self.stop_app()
        for index in range(processes):
            self._app_runs += 1
            port = free_port()
            server = "bench.daphne_uvloop" if os.environ.get("BENCH_UVLOOP") else "daphne"
            cmd = [PYTHON, "-m", server, "-b", "127.0.0.1", "-p", str(port), "-v", "0"]
            cmd.append("bench.asgi:application")
            if self.pin:
                cmd = ["taskset", "-c", str(index % 2), *cmd]
            log = open(self.workdir / f"daphne-{self._app_runs}.log", "wb")  # noqa: SIM115
            self.apps.append(
                subprocess.Popen(cmd, cwd=REPO, env=self.env(), stdout=log, stderr=log)
            )
            self.app_ports.append(port)
        try:
            for port in self.app_ports:
                wait_port(port, 60)
        except TimeoutError:
            self.stop_app()
            raise
        # One cheap request so that Django's URLconf and the like are loaded.
        for index in range(processes):
            self.sql(reset=True, process=index)

    def stop_app(self) -> None:
        for app in self.apps:
            _stop(app)
        self.apps, self.app_ports = [], []

    @property
    def app(self) -> subprocess.Popen[bytes] | None:
        return self.apps[0] if self.apps else None

    @property
    def app_port(self) -> int:
        return self.app_ports[0] if self.app_ports else 0

    @property
    def app_pids(self) -> list[int]:
        return [app.pid for app in self.apps]

    def stop(self) -> None:
        self.stop_app()
        _stop(self.fake)
        self.fake = None
        if self.db == "postgres":
            try:
                import psycopg

                with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {self.pg_db} WITH (FORCE)")
            except Exception as exc:
                print(f"could not drop {self.pg_db}: {exc}", file=sys.stderr)
        if self.layer == "redis":
            self._flush_redis_prefix()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _flush_redis_prefix(self) -> None:
        try:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            for key in client.scan_iter(f"{self.redis_prefix}*", count=1000):
                client.delete(key)
            client.close()
        except Exception as exc:
            print(f"could not clean redis: {exc}", file=sys.stderr)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- probes --------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.app_port}/ws/chat/"

    @property
    def ws_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}/ws/chat/" for port in self.app_ports]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def fake_root(self) -> str:
        return self.fake_url.removesuffix("/v1")

    def sql(self, reset: bool = False, process: int = 0) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.app_ports[process]}/__bench/sql",
            method="POST" if reset else "GET",
            data=b"" if reset else None,
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def probes(self, reset: bool = False, process: int = 0) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.app_ports[process]}/__bench/probes",
            method="POST" if reset else "GET",
            data=b"" if reset else None,
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def stamps(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.fake_root}/bench/stamps", timeout=60) as response:
            return json.load(response)

    def reset_stamps(self) -> None:
        request = urllib.request.Request(f"{self.fake_root}/bench/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30):
            pass

    def pg_stats(self) -> dict[str, int] | None:
        if self.db != "postgres":
            return None
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted "
                "FROM pg_stat_database WHERE datname = %s",
                (self.pg_db,),
            ).fetchone()
        return dict(
            zip(("xact_commit", "tup_inserted", "tup_updated", "tup_deleted"), row, strict=True)
        )
