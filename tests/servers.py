"""The app in its own process, for tests that need real HTTP and websockets.

It runs ``manage.py runserver --noreload`` (daphne's, which also serves /static/
with DEBUG on) as a subprocess on a free loopback port, over a migrated SQLite
file (or whatever DATABASE_URL the caller passes), and is stopped by the fixture
that started it. A subprocess, not a fork: a forked daphne child can inherit a
dead asgiref executor thread from the parent's async tests.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct-horse-battery-9"

# Settings from the developer's shell must not leak into the server under test.
_SCRUBBED_ENV_PREFIXES = ("OPENAI_", "CHATIMG_", "S3_", "DJANGO_")
_SCRUBBED_ENV = {"DATABASE_URL", "REDIS_URL", "SQLITE_PATH", "MEDIA_ROOT", "LOG_LEVEL"}


def server_env(tmp: Path, model_base_url: str, **overrides: str) -> dict[str, str]:
    """A clean environment for the app: file SQLite and media in `tmp`, the fake model."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _SCRUBBED_ENV and not key.startswith(_SCRUBBED_ENV_PREFIXES)
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "chatimg.settings",
            "DJANGO_DEBUG": "1",
            "SQLITE_PATH": str(tmp / "db.sqlite3"),
            "MEDIA_ROOT": str(tmp / "media"),
            "CHATIMG_STREAM_DIR": str(tmp / "answer-streams"),
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": model_base_url,
            "CHATIMG_CHAT_MODEL": "gpt-test",
            "CHATIMG_IMAGE_MODEL": "gpt-image-test",
            "CHATIMG_IMAGE_SIZE": "256x256",
            "CHATIMG_LLM_MAX_RETRIES": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


@dataclass
class AppServer:
    url: str
    db_path: Path
    media_root: Path
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def manage(self, *args: str) -> str:
        """Run a management command against the server's database."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def create_user(self, username: str, password: str = PASSWORD) -> None:
        code = (
            "from django.contrib.auth import get_user_model; "
            f"get_user_model().objects.create_user({username!r}, password={password!r})"
        )
        self.manage("shell", "-c", code)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def start(server: AppServer, attempts: int = 3) -> None:
    for _attempt in range(attempts):
        port = free_port()
        with server.log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                cwd=REPO,
                env=server.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            if http_status(f"{url}/login/") == 200:
                server.url, server.process = url, process
                return
            time.sleep(0.1)
        stop(process)  # it exited (port taken?) or never answered: try another port
    raise RuntimeError(f"The app server did not start:\n{server.log_tail()}")


def launch(env: dict[str, str], log_path: Path, *, migrate: bool = True) -> AppServer:
    """Migrate (optionally) and start one app process; the caller stops it."""
    server = AppServer("", Path(env["SQLITE_PATH"]), Path(env["MEDIA_ROOT"]), env, log_path)
    if migrate and "DATABASE_URL" not in env and not server.db_path.exists():
        # A copy of one migrated file per test process: `migrate` took 4-8 s a server.
        shutil.copyfile(_migrated_sqlite(server), server.db_path)
    elif migrate:
        server.manage("migrate", "--noinput")
    start(server)
    return server


_template: list[Path] = []  # this test process's migrated SQLite file


def _migrated_sqlite(server: AppServer) -> Path:
    if not _template:
        path = Path(tempfile.mkdtemp(prefix="chatimg-migrated-")) / "db.sqlite3"
        AppServer(
            "", path, server.media_root, {**server.env, "SQLITE_PATH": str(path)}, server.log_path
        ).manage("migrate", "--noinput")
        atexit.register(shutil.rmtree, path.parent, ignore_errors=True)
        _template.append(path)
    return _template[0]
