"""A real browser (Debian's headless Chromium, driven by Playwright) through the upload form.
Screenshots go to the test output folder."""
import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR", "test-output/screenshots"))
# The machine's network is closed: keep Chromium from reaching for Google's services.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def page():
    assert Path(CHROMIUM).exists(), "Chromium is missing: `make test` installs Debian's chromium package"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser.new_page()
        browser.close()


def test_upload_an_image_and_see_its_caption(server, page, trained_run):
    import json
    item = json.loads((trained_run / "heldout.json").read_text())[0]
    page.goto(server.url + "/")
    page.get_by_label("Image").set_input_files(item["image"])
    page.get_by_label("Beam width").fill("3")
    page.get_by_role("button", name="Caption").click()
    page.wait_for_selector("#caption")
    page.screenshot(path=str(SCREENSHOTS / "caption.png"), full_page=True)
    assert page.inner_text("#caption").strip()
    assert page.locator("img[alt^='The uploaded image']").count() == 1
    assert "beam width 3" in page.inner_text(".meta")


def test_upload_a_non_image_and_see_a_readable_error(server, page, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("these are notes, not a picture")
    page.goto(server.url + "/")
    page.get_by_label("Image").set_input_files(str(bogus))
    page.get_by_role("button", name="Caption").click()
    page.wait_for_selector("[role=alert]")
    page.screenshot(path=str(SCREENSHOTS / "error.png"), full_page=True)
    assert "not an image in a supported format" in page.inner_text("[role=alert]")
