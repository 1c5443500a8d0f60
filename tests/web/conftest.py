"""Fixtures of the dashboard tests: a real platform process, Debian's Chromium driven by Playwright.

The platform is the real `stockade serve`, which serves the dashboard at /ui. Only loopback
traffic; nothing here skips.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Response,
    sync_playwright,
)

from tests.conftest import REPO, RunningPlatform, start_platform, stop_platform

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
TIME_PACKAGE = "mcp-server-time==2026.10.19"  # as in the bundled catalog, so images are shared

TEST_CATALOG = f"""\
version: 1
servers:
  - name: time
    description: Current time and time-zone conversion (PyPI mcp-server-time).
    build:
      pypi: {TIME_PACKAGE}
    command: [mcp-server-time]
    resources: small
    network: none

  - name: keyed-time
    description: The time server, declared with an API key it does not use (tests the credentials dialog).
    build:
      pypi: {TIME_PACKAGE}
    command: [mcp-server-time]
    required_env:
      - name: PLANTED_API_KEY
        secret: true
        description: An API key; mcp-server-time ignores it.
    optional_env:
      - name: GREETING
        description: A plain, non-secret setting.
    resources: small
    network: none

  - name: partner-api
    description: A server that may call one partner API through the egress proxy (never deployed here).
    image: stockade-tests/partner-api:1
    command: [partner-api]
    resources: medium
    network: egress
    egress: ["api.partner.example:443", "*.partner.example:443"]

  - name: web-browser
    description: A browsing server with unrestricted network access (never deployed here).
    image: stockade-tests/web-browser:1
    command: [web-browser]
    resources: large
    network: open
"""


@dataclass
class WebPlatform:
    platform: RunningPlatform

    @property
    def ui(self) -> str:
        return f"{self.platform.control_url}/ui"

    @property
    def admin_token(self) -> str:
        return self.platform.admin_token

    @property
    def data_dir(self) -> Path:
        return self.platform.data_dir

    def api(self) -> httpx2.Client:
        return self.platform.api()


@pytest.fixture(scope="session")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebPlatform]:
    data_dir = tmp_path_factory.mktemp("web-platform")
    catalog = data_dir / "catalog.yaml"
    catalog.write_text(TEST_CATALOG)
    running = start_platform(data_dir, STOCKADE_CATALOG_FILE=str(catalog))
    try:
        probe = httpx2.get(f"{running.control_url}/ui/login", timeout=10)
        assert probe.status_code == 200, (
            "the dashboard is not mounted: add `app.include_router(create_dashboard_router(database, deployments, "
            f"gateway), prefix=\"/ui\")` to create_control_app (GET /ui/login answered {probe.status_code})")
        yield WebPlatform(running)
    finally:
        try:
            with running.api() as api:
                for deployment in api.get("/deployments").json():
                    api.delete(f"/deployments/{deployment['slug']}")
        finally:
            stop_platform(running)


# Package-scoped, not session-scoped: Playwright's sync API keeps an asyncio loop running in the
# main thread while it lives, and any test after the web tests that runs its own loop would fail.
@pytest.fixture(scope="package")
def playwright_instance() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="package")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: apt-get install -y chromium"
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()


@dataclass
class Watched:
    """A page and what the browser saw: console messages, page errors, every response with its body."""

    page: Page
    context: BrowserContext
    web: WebPlatform
    console: list[str] = field(default_factory=list, repr=False)
    errors: list[str] = field(default_factory=list)
    bodies: list[tuple[str, int, bytes]] = field(default_factory=list, repr=False)

    def goto(self, path: str) -> Response:
        response = self.page.goto(self.web.ui + path)
        assert response is not None
        return response

    def login(self, token: str | None = None) -> None:
        self.goto("/login")
        self.page.get_by_label("Admin token").fill(token or self.web.admin_token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_load_state()

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m or "Content-Security-Policy" in m]


@contextlib.contextmanager
def watch(browser: Browser, web: WebPlatform) -> Iterator[Watched]:
    """A fresh browser context (no cookies) on `web`, recording what the browser sees."""
    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    page = context.new_page()
    seen = Watched(page=page, context=context, web=web)
    page.on("console", lambda m: seen.console.append(f"{m.type}: {m.text}") if m.type in {"error", "warning"} else None)
    page.on("pageerror", lambda e: seen.errors.append(str(e)))

    def keep_body(response: Response) -> None:
        try:
            body = response.body()
        except Exception:  # noqa: BLE001 - redirects and aborted loads have no body
            body = b""
        seen.bodies.append((response.url, response.status, body))

    page.on("response", keep_body)
    try:
        yield seen
    finally:
        context.close()


@pytest.fixture
def watched(browser: Browser, web: WebPlatform) -> Iterator[Watched]:
    with watch(browser, web) as seen:
        yield seen


def console_text(message: ConsoleMessage) -> str:  # pragma: no cover - helper for debugging
    return f"{message.type}: {message.text}"


def form_post(watched: Watched, path: str, form: dict[str, Any]) -> Any:
    """POST a form with the browser context's cookies (no redirects followed)."""
    return watched.context.request.post(watched.web.ui + path, form=form, max_redirects=0)
