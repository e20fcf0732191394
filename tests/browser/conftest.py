"""Browser tests: Debian's chromium, driven by Playwright, against a real app server.

The app runs as a separate process (``manage.py runserver`` from daphne, which also
serves /static/ with DEBUG on) over its own migrated SQLite file, and talks to the
scriptable OpenAI fake started here in the test process, exactly as it would talk to a
real provider. Nothing in the app is patched: what the browser sees went through HTTP,
the websocket, the turn engine, the fake's SSE stream and local image storage.

Playwright's sync API runs an event loop in this thread, so these tests run in their
own pytest invocation: ``pytest tests/browser`` (and the main run uses
``-m "not browser"``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from conversations.offline_model import OfflineModelServer
from tests.servers import PASSWORD, AppServer, http_status, launch, server_env, stop

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: Fake model's delay between streamed tokens: slow enough to watch text grow.
TOKEN_DELAY = 0.03
TIMEOUT_MS = 15_000


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Every test in this folder is a browser test, and runs after all others: once
    # Playwright's loop is running, pytest-asyncio tests in the same process fail.
    here = Path(__file__).parent
    browser_tests = [item for item in items if here in Path(str(item.path)).parents]
    for item in browser_tests:
        item.add_marker(pytest.mark.browser)
    items[:] = [item for item in items if item not in browser_tests] + browser_tests


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember each phase's outcome so the page fixture can screenshot failures.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


# --- output folder -----------------------------------------------------------------


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Screenshots and the server log: $CHATIMG_TEST_OUTPUT or <repo>/test-results/."""
    path = Path(os.environ.get("CHATIMG_TEST_OUTPUT") or REPO / "test-results")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- the OpenAI fake ------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_server() -> Iterator[OfflineModelServer]:
    with OfflineModelServer(token_delay=TOKEN_DELAY) as server:
        yield server


@pytest.fixture
def model(model_server: OfflineModelServer) -> OfflineModelServer:
    """The fake provider with no leftover scripts or recorded requests."""
    model_server.reset()
    return model_server


@pytest.fixture(scope="session")
def app_server(model_server: OfflineModelServer, output_dir: Path) -> Iterator[AppServer]:
    """The app in its own process, on a fresh migrated SQLite file, using the fake model."""
    tmp = Path(tempfile.mkdtemp(prefix="chatimg-browser-"))
    log_path = output_dir / "browser-server.log"
    log_path.write_bytes(b"")
    server = None
    try:
        server = launch(server_env(tmp, model_server.base_url), log_path)
        static = http_status(f"{server.url}/static/conversations/chat.js")
        assert static == 200, f"/static/conversations/chat.js answered {static}"
        yield server
    finally:
        if server is not None and server.process is not None:
            stop(server.process)
        shutil.rmtree(tmp, ignore_errors=True)


# --- the browser ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    expect.set_options(timeout=TIMEOUT_MS)
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@dataclass
class PageErrors:
    """Uncaught exceptions in the page's scripts (a broken chat.js shows up here)."""

    errors: list[str] = field(default_factory=list)


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def page(
    browser: Browser,
    app_server: AppServer,
    page_errors: PageErrors,
    output_dir: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Page]:
    """A fresh browser context (no cookies) per test, 1280x800, on the app's base URL."""
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    failure_shot = output_dir / f"failed-{name}.png"
    failure_shot.unlink(missing_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=app_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("pageerror", lambda error: page_errors.errors.append(str(error)))
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        try:
            page.screenshot(path=failure_shot)
        except Exception as exc:
            print(f"could not screenshot the failed page: {exc}")
        print(f"app server log (tail):\n{app_server.log_tail()}")
    context.close()


@pytest.fixture
def user(app_server: AppServer) -> str:
    """A brand-new user (its own empty conversation list); returns the username."""
    username = f"user-{uuid.uuid4().hex[:8]}"
    app_server.create_user(username)
    return username


@pytest.fixture
def log_in(page: Page) -> Callable[[str], None]:
    """Log in through the login form, as a person would, and land on the chat page."""

    def _log_in(username: str, password: str = PASSWORD) -> None:
        page.goto("/login/")
        page.locator("#id_username").fill(username)
        page.locator("#id_password").fill(password)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(re.compile(r"/$"))
        expect(page.locator("textarea#prompt")).to_be_visible()

    return _log_in
