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


def captioned_unlike_the_others(trained_run) -> dict:
    """A held-out scene whose greedy caption no other scene has: showing another image's caption fails."""
    import json
    from collections import Counter

    heldout = json.loads((trained_run / "heldout.json").read_text())
    counts = Counter(item["keras_greedy"] for item in heldout)
    return next(item for item in heldout if counts[item["keras_greedy"]] == 1)


def test_upload_an_image_and_see_its_caption(server, page, trained_run):
    import requests

    item = captioned_unlike_the_others(trained_run)
    with open(item["image"], "rb") as f:
        expected = requests.post(server.url + "/api/v1/captions", files={"image": f},
                                 data={"beam_size": "3"}).json()["captions"][0]["caption"]
    page.goto(server.url + "/")
    page.get_by_label("Image").set_input_files(item["image"])
    page.get_by_label("Beam width").fill("3")
    page.get_by_role("button", name="Caption").click()
    page.wait_for_selector("#caption")
    page.screenshot(path=str(SCREENSHOTS / "caption.png"), full_page=True)
    assert page.inner_text("#caption").strip() == expected  # this image's beam-3 caption, as the API gives it
    assert page.locator("img[alt^='The uploaded image']").count() == 1
    assert "beam width 3" in page.inner_text(".meta")


def test_with_api_keys_the_form_asks_for_one_and_keeps_it_for_the_next_upload(keyed_server, page, trained_run):
    from tests.conftest import API_KEYS

    import requests

    item = captioned_unlike_the_others(trained_run)
    with open(item["image"], "rb") as f:
        expected = requests.post(keyed_server.url + "/api/v1/captions", files={"image": f},
                                 headers={"Authorization": f"Bearer {API_KEYS[0]}"}).json()["captions"][0]["caption"]
    page.goto(keyed_server.url + "/")
    page.get_by_label("Image").set_input_files(item["image"])
    page.get_by_label("API key").fill("not-the-key-0123456789abc")
    page.get_by_role("button", name="Caption").click()
    page.wait_for_selector(".error")
    assert "That API key is not valid." in page.inner_text(".error")
    page.get_by_label("Image").set_input_files(item["image"])
    page.get_by_label("API key").fill(API_KEYS[0])
    page.get_by_role("button", name="Caption").click()
    page.wait_for_selector("#caption")
    assert page.inner_text("#caption").strip() == expected
    page.get_by_label("Image").set_input_files(item["image"])  # the page kept the key: no need to type it again
    page.get_by_role("button", name="Caption").click()
    page.wait_for_selector("#caption")
    page.screenshot(path=str(SCREENSHOTS / "caption-with-key.png"), full_page=True)
    assert page.get_by_label("API key").input_value() == API_KEYS[0] and page.locator(".error").count() == 0


def test_upload_a_non_image_and_see_a_readable_error(server, page, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("these are notes, not a picture")
    page.goto(server.url + "/")
    page.get_by_label("Image").set_input_files(str(bogus))
    page.get_by_role("button", name="Caption").click()
    page.wait_for_selector("[role=alert]")
    page.screenshot(path=str(SCREENSHOTS / "error.png"), full_page=True)
    assert "not an image in a supported format" in page.inner_text("[role=alert]")


def test_each_word_of_an_attention_model_shows_where_it_looked(attention_server, page, shapes_dataset):
    image = sorted((shapes_dataset / "Images").glob("*.png"))[0]
    page.goto(attention_server.url + "/")
    page.get_by_label("Image").set_input_files(str(image))
    page.get_by_role("button", name="Caption").click()
    page.wait_for_selector("#attention:not([hidden]) canvas")
    page.screenshot(path=str(SCREENSHOTS / "attention.png"), full_page=True)
    words = page.inner_text("#caption").split()
    panels = page.locator("#attention .word")
    assert panels.count() == len(words) and [panels.nth(i).inner_text() for i in range(len(words))] == words
    # Each panel is the image with its word's weights drawn on it: not blank, and not all alike.
    sums = page.evaluate("""() => [...document.querySelectorAll('#attention canvas')].map(canvas => {
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let total = 0; for (let i = 0; i < pixels.length; i += 4) total += pixels[i] + pixels[i + 1] + pixels[i + 2];
        return total; })""")
    assert all(s > 0 for s in sums) and len(set(sums)) > 1


def test_a_pooled_model_shows_no_attention(server, page, trained_run):
    item = captioned_unlike_the_others(trained_run)
    page.goto(server.url + "/")
    page.get_by_label("Image").set_input_files(item["image"])
    page.get_by_role("button", name="Caption").click()
    page.wait_for_selector("#caption")
    assert page.inner_text("#caption").strip() == item["keras_greedy"]  # the image's own greedy caption
    assert page.locator("#attention").count() == 0
