"""The dashboard in a real browser: Debian's Chromium driven by Playwright against the live
server, with the controller and real replica processes (tests/stack.py)."""

from __future__ import annotations

import os
import shutil

import cloudpickle
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("LAUNCH_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = "/tmp/dashboard.png"
PASSWORD = "a long enough password"


def _browser_missing() -> str | None:
    if not shutil.which(CHROMIUM):
        return f"Chromium not found at {CHROMIUM} (scripts/install-browser.sh installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (requirements-test.txt)"
    return None


@pytest.fixture
def page(monkeypatch):
    missing = _browser_missing()
    if missing:
        if os.environ.get("LAUNCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LAUNCH_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the ORM calls the test makes
    # between browser steps are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage", "--disable-gpu",
                  "--no-first-run", "--disable-extensions"],
        )  # fmt: skip
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        page = context.new_page()
        # The dashboard must pass its own Content-Security-Policy: no refused script or style.
        violations = []
        page.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
        try:
            yield page
        finally:
            context.close()
            browser.close()
        assert violations == []


def doubler_bundle():
    def load_model_fn():
        import time

        # A slow load keeps the endpoint out of READY long enough to watch the cell change.
        time.sleep(3)
        return 2

    def load_predict_fn(model):
        def predict(x):
            return {"doubled": x * model}

        return predict

    return {"load_model_fn": load_model_fn, "load_predict_fn": load_predict_fn}


def log_in(page, base: str, username: str) -> None:
    from accounts.services import team_get_or_create_for_user

    team_get_or_create_for_user(username=username, team_name=f"{username}-team", password=PASSWORD)
    page.goto(f"{base}/endpoints/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/endpoints/")


def test_upload_deploy_watch_ready_and_try_it(live_stack, page, tmp_path):
    base = live_stack
    log_in(page, base, "dana")

    # Upload a bundle through the form.
    bundle_file = tmp_path / "doubler.pkl"
    bundle_file.write_bytes(cloudpickle.dumps(doubler_bundle()))
    page.click("nav >> text=Bundles")
    page.click("text=Upload a bundle")
    page.fill("#id_name", "doubler")
    page.set_input_files("#id_file", str(bundle_file))
    page.fill("#id_requirements", "[]")
    page.click("button:has-text('Upload and create')")
    page.wait_for_selector("h1:has-text('doubler')")

    # Deploy it as a sync endpoint.
    page.click("text=Deploy as endpoint")
    page.fill("#id_name", "doubler")
    page.check("input[name=endpoint_type][value=sync]")
    page.fill("#id_min_workers", "1")
    page.fill("#id_max_workers", "1")
    page.click("button:has-text('Deploy')")
    page.wait_for_selector("#status-panel")

    # The list's status cell turns READY by itself: the marker proves there was no reload.
    page.click("nav >> text=Endpoints")
    row = page.locator("#endpoints tr", has_text="doubler")
    assert row.locator(".status-cell").get_attribute("data-status") != "READY"
    page.evaluate("window.noReload = true")
    try:
        row.locator(".status-cell[data-status=READY]").wait_for(timeout=60_000)
    except Exception:
        page.screenshot(path="/tmp/dashboard-failure.png", full_page=True)
        raise
    assert page.evaluate("window.noReload") is True

    # Try it: the task's status updates in place until the result shows.
    row.locator("a[href^='/endpoints/']", has_text="doubler").click()
    page.wait_for_selector("#status-panel[data-status=READY]")
    page.evaluate("window.noReload = true")
    page.fill("#id_args", '{"x": 21}')
    page.click("button:has-text('Send')")
    page.wait_for_selector("#task[data-status=SUCCESS]", timeout=30_000)
    assert '"doubled": 42' in page.inner_text("#task-result")
    assert page.evaluate("window.noReload") is True
    assert "1 available" in page.inner_text("#status-panel").replace("\n", " ")

    page.screenshot(path=SCREENSHOT, full_page=True)


def test_deploy_form_errors_show_in_the_browser(live_server, page):
    from tests.factories import make_bundle

    log_in(page, live_server.url, "erin")
    from accounts.models import Team

    make_bundle(Team.objects.get(name="erin-team"), name="model")
    page.goto(f"{live_server.url}/endpoints/new/")
    page.fill("#id_name", "sync-zero")
    page.fill("#id_min_workers", "0")
    page.click("button:has-text('Deploy')")
    error = page.locator("#field-min_workers .errorlist")
    assert "a sync endpoint keeps at least one worker" in error.inner_text()
    assert page.input_value("#id_name") == "sync-zero"
