"""A screenshot of the upload form captioning one image, for the README (docs/form.png).

Usage: python -m docs.screenshot --url http://127.0.0.1:8000 --image scene.png --out docs/form.png
Drives Debian's Chromium through Playwright, as the browser tests do (`make browser` installs it).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/form.png"))
    parser.add_argument("--beam-size", default="3")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None or not args.image.is_file():
        print(f"error: {'no chromium (make browser)' if chromium is None else f'{args.image} does not exist'}",
              file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 900, "height": 900})
        page.goto(args.url + "/")
        page.get_by_label("Image").set_input_files(str(args.image))
        page.get_by_label("Beam width").fill(args.beam_size)
        page.get_by_role("button", name="Caption").click()
        page.wait_for_selector("#caption")
        if page.locator("#attention").count():
            page.wait_for_selector("#attention:not([hidden]) canvas")
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
