"""Browser tests: Debian's chromium, driven by Playwright, against a real app server.

The app runs as a separate process (``manage.py runserver`` from daphne, which also
serves /static/ with DEBUG on) over its own migrated SQLite file, and talks to the
scriptable OpenAI fake started here in the test process, exactly as it would talk to a
real provider. Nothing in the app is patched: what the browser sees went through HTTP,
the websocket, the turn engine, the fake's SSE stream and local image storage.

Playwright's sync API runs an event loop in this thread, so these tests run in their
own pytest invocation: ``pytest tests/browser`` (and the main run uses
``-m "not browser"``).

Screenshots of the main states go to the output folder; with
CHATIMG_UPDATE_SCREENSHOTS=1 they also replace the README's in docs/screenshots/.
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

# Playwright's sync API runs an event loop in this thread, and these tests read
# the database synchronously on purpose; Django's guard against sync ORM calls
# in async code stays on for every other test.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from offline_model import OfflineModelServer
from tests.servers import PASSWORD, AppServer, http_status, launch, server_env, stop

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
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
# Each pytest-xdist worker serves its own app: their logs get the worker's name.
WORKER = "-" + os.environ["PYTEST_XDIST_WORKER"] if "PYTEST_XDIST_WORKER" in os.environ else ""


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


def _serve(model_server: OfflineModelServer, log_path: Path, **env: str) -> Iterator[AppServer]:
    tmp = Path(tempfile.mkdtemp(prefix="chatimg-browser-"))
    log_path.write_bytes(b"")
    server = None
    try:
        # 512 px pictures: big enough to look like pictures in the screenshots.
        env = {"CHATIMG_IMAGE_SIZE": "512x512", **env}
        server = launch(server_env(tmp, model_server.base_url, **env), log_path)
        static = http_status(f"{server.url}/static/conversations/chat.js")
        assert static == 200, f"/static/conversations/chat.js answered {static}"
        yield server
    finally:
        if server is not None and server.process is not None:
            stop(server.process)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def app_server(model_server: OfflineModelServer, output_dir: Path) -> Iterator[AppServer]:
    """The app in its own process, on a fresh migrated SQLite file, using the fake model.

    Model-written titles are off here: the title request would take the next scripted
    reply of whichever test runs. ``titled_app_server`` has them on.
    """
    log = output_dir / f"browser-server{WORKER}.log"
    yield from _serve(model_server, log, CHATIMG_LLM_TITLES="0")


@pytest.fixture(scope="session")
def titled_app_server(model_server: OfflineModelServer, output_dir: Path) -> Iterator[AppServer]:
    """A second app process that asks the model for a title after a first exchange."""
    yield from _serve(
        model_server, output_dir / f"browser-server-titles{WORKER}.log", CHATIMG_LLM_TITLES="1"
    )


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
def open_page(
    browser: Browser,
    app_server: AppServer,
    page_errors: PageErrors,
    output_dir: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Page]]:
    """Open a page in a fresh browser context (no cookies): 1280x800 on the app unless told.

    Takes Playwright's new_context options (viewport, color_scheme, base_url…). Every page
    a failed test opened is screenshotted to the output folder.
    """
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    for old in output_dir.glob(f"failed-{name}*.png"):
        old.unlink()
    contexts: list[BrowserContext] = []

    def _open(**options: Any) -> Page:
        context = browser.new_context(
            **{"viewport": {"width": 1280, "height": 800}, "base_url": app_server.url, **options}
        )
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: page_errors.errors.append(str(error)))
        return page

    yield _open
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        pages = [page for context in contexts for page in context.pages]
        for number, page in enumerate(pages):
            try:
                page.screenshot(path=output_dir / f"failed-{name}-{number}.png")
            except Exception as exc:
                print(f"could not screenshot the failed page: {exc}")
        print(f"app server log (tail):\n{app_server.log_tail()}")
    for context in contexts:
        context.close()
    assert page_errors.errors == [], f"uncaught errors in the page: {page_errors.errors}"


@pytest.fixture
def page(open_page: Callable[..., Page]) -> Page:
    return open_page()


@pytest.fixture
def user(app_server: AppServer) -> str:
    """A brand-new user (its own empty conversation list); returns the username."""
    username = f"ada-{uuid.uuid4().hex[:6]}"
    app_server.create_user(username)
    return username


def log_in_as(page: Page, username: str, password: str = PASSWORD) -> None:
    """Log in through the login form, as a person would, and land on the chat page."""
    page.goto("/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/$"))
    wait_until_ready(page)


def wait_until_ready(page: Page) -> None:
    """The chat page's script has run (typing before it does is not what we test)."""
    expect(page.locator("#main[data-ready]")).to_have_count(1)


@pytest.fixture
def log_in(page: Page) -> Callable[[str], None]:
    """log_in(username): log the default page in."""
    return lambda username: log_in_as(page, username)


@pytest.fixture
def shoot(output_dir: Path) -> Callable[..., None]:
    """shoot(page, name): a screenshot in the output folder, and in docs/screenshots/
    too when CHATIMG_UPDATE_SCREENSHOTS=1 (how the README's pictures are made) unless
    docs=False."""

    def _shoot(page: Page, name: str, *, docs: bool = True) -> None:
        page.screenshot(path=output_dir / f"{name}.png")
        if docs and os.environ.get("CHATIMG_UPDATE_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SCREENSHOTS / f"{name}.png")

    return _shoot
