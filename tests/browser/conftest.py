"""A real browser against the whole service: Debian's headless Chromium driven by
Playwright, on the end-to-end stack (uvicorn + Celery worker + the tiny model).

Playwright's own browser download is never used (`executable_path` is the system
Chromium); without /usr/bin/chromium the suite is skipped with the reason and the apt-get
line that installs it. Each test's pages are saved as screenshots under
tests/browser/screenshots/ (or $TUNEFORGE_SCREENSHOTS) so a failure can be looked at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


# The end-to-end stack (a real API, worker and model) is tests/e2e_stack.py's, shared with tests/e2e.
from tests.e2e_stack import Client, team_key

CHROMIUM = os.environ.get("TUNEFORGE_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("TUNEFORGE_SCREENSHOTS") or Path(__file__).parent / "screenshots")


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium fonts-noto-cjk (as .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=shutil.which(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SHOTS}")
    return SHOTS


@pytest.fixture(scope="session")
def key_a(e2e_env) -> str:
    return team_key(e2e_env, "browser-a")


@pytest.fixture(scope="session")
def key_b(e2e_env) -> str:
    return team_key(e2e_env, "browser-b")


@pytest.fixture(scope="session")
def client_a(e2e_api, key_a, e2e_model, celery_worker) -> Client:
    """Team A through the API (to set up jobs the page then shows)."""
    return Client(e2e_api, key_a, e2e_model, celery_worker.pid)


class Dashboard:
    """One browser context (one tab's session storage) signed in as a team."""

    def __init__(self, browser, base: str, shots: Path, width: int = 1280, height: int = 900):
        self.base, self.shots = base, shots
        self.context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True, locale="ko-KR")
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def sign_in(self, key: str) -> None:
        self.page.goto(f"{self.base}/")
        self.page.fill("#api-key", key)
        self.page.click("form.signin button[type=submit]")
        self.page.wait_for_selector("#jobs")

    def go(self, hash_: str) -> None:
        self.page.goto(f"{self.base}/{hash_}")

    def shot(self, name: str, full_page: bool = True) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def dashboard(browser, e2e_api, shots) -> Iterator:
    made: list[Dashboard] = []

    def make(**kw) -> Dashboard:
        made.append(Dashboard(browser, e2e_api, shots, **kw))
        return made[-1]

    yield make
    for d in made:
        errors = d.errors
        d.close()
        assert not errors, f"JavaScript errors on the page: {errors}"
