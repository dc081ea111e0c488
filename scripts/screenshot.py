"""docs/screenshot.png: the offline trial answering a photo, as the browser test drives it.

    python scripts/screenshot.py

The README's picture. It is made by the project's own browser tooling (testkit's launched app,
Debian's Chromium through Playwright, tests/browser/test_browser.py's launch arguments): the
trial's first example picture sent, the seeing model's answer streamed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from app.main import build_engine  # noqa: E402
from app.settings import load_settings  # noqa: E402
from testkit.launch import launched_app  # noqa: E402
from tests.browser.test_browser import ARGS, CHROMIUM, ask_the_trials_first_example  # noqa: E402

OUT = ROOT / "docs" / "screenshot.png"


def main() -> None:
    settings = load_settings(["--trial", "--max-new-tokens", "16"], environ={})
    with launched_app(settings, build_engine(settings)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        ask_the_trials_first_example(page, url)
        page.evaluate("window.scrollTo(0, 0)")
        page.mouse.click(5, 795)  # the focus off the box, whose caret would scroll the page
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(OUT))
        browser.close()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
