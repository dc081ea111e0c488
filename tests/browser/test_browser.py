"""The whole chat flow in a real Chromium (Debian's), driven by Playwright.

Screenshots of every step go to artifacts/browser/. Without Chromium the test is skipped with a
message saying how to install it; `scripts/test.sh` installs it where it can.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from app.media import MediaCache
from app.settings import load_settings
from testkit.engines import load_engine
from testkit.launch import launched_app

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    # A camera that shows a test pattern, allowed without asking (the camera button's test).
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


def _require_browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(
            "Chromium is not installed: `apt-get install -y chromium` (or set CHROMIUM_PATH) "
            "to run the browser test"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright is not installed: `pip install playwright`")


def _generation_threads():
    return [t for t in threading.enumerate() if t.name == "qwen-generate" and t.is_alive()]


@pytest.fixture(scope="module")
def browser_and_url(tiny_checkpoint):
    _require_browser()
    from playwright.sync_api import sync_playwright

    settings = load_settings(["--max-new-tokens", "3000"], environ={})
    engine = load_engine(
        str(tiny_checkpoint("qwen3_vl", suppress_eos=True)),
        media_cache=MediaCache(),
        max_new_tokens=settings.max_new_tokens,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with launched_app(settings, engine) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser, url
        browser.close()


@pytest.fixture(scope="module")
def page(browser_and_url):
    browser, url = browser_and_url
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    page.wait_for_selector("#input textarea")
    yield page
    context.close()
    (ARTIFACTS / "console-errors.log").write_text("\n".join(errors))


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _bot_text(page) -> str:
    bots = page.locator("#chatbot [data-testid='bot']")
    return bots.last.inner_text() if bots.count() else ""


def _send(page, text: str, files: list[Path] = ()) -> None:
    if files:
        page.set_input_files("#input input[type=file]", [str(f) for f in files])
        page.wait_for_function(
            "n => document.querySelectorAll('#input .thumbnail-item, #input img, #input video')"
            ".length >= n",
            arg=len(files),
            timeout=15000,
        )
    page.fill("#input textarea", text)
    page.locator("#input textarea").press("Enter")


def _stop_button(page):
    return page.locator("#input button", has_text="Stop")


def _wait_until(condition, message: str, timeout_s: float = 10) -> None:
    """Poll `condition` until it holds; fail with `message` after `timeout_s`."""
    deadline = time.perf_counter() + timeout_s
    while not condition():
        assert time.perf_counter() < deadline, message
        time.sleep(0.05)


def _wait_idle(page, timeout_s: float = 60, send: str = "Send") -> None:
    """Until the reply has ended: Send (the page's word `send`) is back."""
    page.locator("#input button", has_text=send).wait_for(timeout=timeout_s * 1000)


def ask_the_trials_first_example(page, url: str) -> None:
    """The offline trial's page opened, its first example clicked and sent, its answer ended
    (tests/app/test_seeing.py; scripts/screenshot.py makes the README's picture so)."""
    page.goto(url)
    page.locator("#banner summary", has_text="trained here on drawn pictures").wait_for()
    page.get_by_text("What colour is the shape?").first.click()  # the first example
    page.locator("#input .thumbnail-item, #input img").first.wait_for(timeout=15000)
    page.locator("#input textarea").press("Enter")
    page.wait_for_selector("#chatbot :text('tokens')", timeout=30000)
    _wait_idle(page)


def _set_max_new_tokens(page, value: int) -> None:
    box = page.locator("#max_new_tokens input[type=number]")
    if not box.is_visible():
        page.locator("#settings").get_by_text("Settings").first.click()
        box.wait_for(state="visible")
    slider = page.locator("#max_new_tokens input[type=range]")
    # The accordion mounts its content as it opens; a value typed before that is lost, so type
    # until the slider shows it.
    for _ in range(20):
        box.fill(str(value))
        box.press("Tab")
        if slider.input_value() == str(value):
            return
        time.sleep(0.25)
    raise AssertionError(f"max new tokens stayed at {slider.input_value()}")


def test_the_whole_chat_flow(page, media, tmp_path):
    _shot(page, "01-loaded")

    # An example fills the box (text and file) without sending it.
    page.get_by_text("Which quarter sold the most").first.click()
    page.wait_for_function(
        "() => document.querySelector('#input textarea').value.startsWith('Which quarter')"
    )
    assert page.locator("#chatbot [data-testid='user']").count() == 0
    page.fill("#input textarea", "")
    page.locator("#input button[aria-label^='Remove'], #input .delete-button").first.click()

    # An image and a question; the reply grows while it streams.
    _send(page, "What is in this picture?", [media / "red.jpg"])
    page.wait_for_selector("#chatbot [data-testid='user'] img", timeout=15000)
    page.wait_for_function(
        "() => { const b = document.querySelectorAll(\"#chatbot [data-testid='bot']\");"
        " return b.length && b[b.length - 1].innerText.length > 20; }",
        timeout=30000,
    )
    first = len(_bot_text(page))
    # The reply grows while Stop is still on offer, i.e. before the reply has ended.
    page.wait_for_function(
        "n => { const b = document.querySelectorAll(\"#chatbot [data-testid='bot']\");"
        " return b[b.length - 1].innerText.length > n; }",
        arg=first,
        timeout=30000,
    )
    assert _stop_button(page).is_visible(), "the reply should grow while it streams"
    _shot(page, "02-streaming")

    # Stop in mid-reply: the reply ends with its stats line marked "stopped" (the last update
    # the server sends for it), and the model's thread is gone, so nothing more can arrive.
    _stop_button(page).click()
    _wait_idle(page, 10)
    page.wait_for_selector("#chatbot :text('stopped')", timeout=10000)
    stopped = _bot_text(page)
    _wait_until(lambda: not _generation_threads(), "the generation thread should end")
    assert _bot_text(page) == stopped
    # The keyboard is back in the box, for the next question (before: it left the box).
    assert page.evaluate("() => document.activeElement.matches('#input textarea')")
    _shot(page, "03-stopped")

    # Settings: a small max new tokens, respected by the next reply (Regenerate).
    _set_max_new_tokens(page, 12)
    _shot(page, "04-settings")
    page.locator("#regenerate").click()
    # The new reply's own stats: ":text('12 tokens')" also matched the stopped reply's "112
    # tokens", and the chat was then read while the new reply streamed, without its stats.
    page.wait_for_function(
        "() => { const chat = document.querySelector('#chatbot').innerText;"
        " return /· 12 tokens ·/.test(chat) && !chat.includes('stopped')"
        " && !document.querySelector('#input .stop-button'); }",
        timeout=30000,
    )
    _wait_idle(page)
    assert _bot_text(page) != stopped
    # The stats line's context meter: the conversation against what the engine reads.
    chat = page.locator("#chatbot").inner_text()
    assert re.search(r"context [\d,]+ of [\d,]+ tokens", chat), chat
    assert page.locator("#chatbot [data-testid='user']").count() == 2  # image + text, once
    _shot(page, "05-regenerated")

    # A video, then a broken file: the error is in the chat and the chat goes on.
    _send(page, "And this clip?", [media / "clip.mp4"])
    page.wait_for_selector("#chatbot video", timeout=15000)
    page.wait_for_function(
        '() => document.querySelectorAll("#chatbot :is(button,span,div)").length &&'
        " [...document.querySelectorAll('#chatbot')].some(e => (e.innerText.match(/12 tokens/g)"
        " || []).length >= 2)",
        timeout=30000,
    )
    _wait_idle(page)
    _shot(page, "06-video")
    broken = tmp_path / "broken.jpg"
    broken.write_text("this is not a picture")
    _send(page, "Look at this", [broken])
    page.wait_for_selector(
        "#chatbot :text('broken.jpg: not an image, video or PDF')", timeout=15000
    )
    _wait_idle(page)
    _shot(page, "07-broken-file")

    # Undo removes the last turn and gives its text back; Clear empties the chat.
    users_before = page.locator("#chatbot [data-testid='user']").count()
    page.locator("#undo").click()
    page.wait_for_function(
        "n => document.querySelectorAll(\"#chatbot [data-testid='user']\").length < n",
        arg=users_before,
        timeout=10000,
    )
    assert page.locator("#input textarea").input_value() == "Look at this"
    assert page.locator("#chatbot :text('broken.jpg')").count() == 0
    _shot(page, "08-undone")
    page.locator("#clear").click()
    page.wait_for_function(
        "() => document.querySelectorAll(\"#chatbot [data-testid='user']\").length === 0",
        timeout=10000,
    )
    _shot(page, "09-cleared")


def test_clear_in_mid_reply_empties_the_chat_and_stops(page):
    _send(page, "Talk for a long time")
    page.wait_for_function(
        "() => { const b = document.querySelectorAll(\"#chatbot [data-testid='bot']\");"
        " return b.length && b[b.length - 1].innerText.length > 20; }",
        timeout=30000,
    )
    page.locator("#clear").click()
    _wait_until(lambda: not _generation_threads(), "Clear should stop the generation")
    # The reply's last update (sent once its thread ended) leaves the chat empty.
    page.wait_for_function(
        '() => !document.querySelector("#chatbot :is([data-testid=user], [data-testid=bot])")',
        timeout=10000,
    )
    _wait_idle(page, 10)
    _shot(page, "12-cleared-mid-reply")
    assert page.locator("#chatbot .error").count() == 0


def test_esc_stops_a_streaming_reply(page):
    page.locator("#clear").click()
    _set_max_new_tokens(page, 3000)  # an earlier test of this page left it at 12
    _send(page, "Talk for a long time")
    page.wait_for_function(
        "() => { const b = document.querySelectorAll(\"#chatbot [data-testid='bot']\");"
        " return b.length && b[b.length - 1].innerText.length > 20; }",
        timeout=30000,
    )
    assert page.locator("#input [aria-label='Stop the reply (Esc)']").count() == 1
    # Regenerate and Undo wait for the reply (before, they misbehaved and lost it).
    assert page.locator("#regenerate").is_disabled() and page.locator("#undo").is_disabled()
    page.keyboard.press("Escape")
    _wait_until(lambda: not _generation_threads(), "Esc should stop the generation")
    page.wait_for_selector("#chatbot :text('stopped')", timeout=10000)
    _wait_idle(page, 10)
    page.wait_for_function("() => !document.querySelector('#undo').disabled", timeout=10000)
    assert page.locator("#regenerate").is_enabled()
    assert len(_bot_text(page)) > 20  # the partial answer stays
    _shot(page, "13-esc-stopped")


_STREAMING = """question => {
  const rows = [...document.querySelectorAll('#chatbot .message-row')];
  const last = rows[rows.length - 1], before = rows[rows.length - 2];
  return !!document.querySelector('#input .stop-button') && last?.matches('.bot-row') &&
    last.innerText.length > 20 && before?.innerText.includes(question);
}"""


def _wait_streaming(page, question: str) -> None:
    """Until the reply to `question` streams (its text under way, Stop shown)."""
    page.wait_for_function(_STREAMING, arg=question, timeout=30000)


def _questions(page) -> list[str]:
    return [u.inner_text().strip() for u in page.locator("#chatbot [data-testid='user']").all()]


def test_a_question_typed_while_a_reply_streams_is_queued_and_sent_when_it_ends(page):
    """Before: Enter while a reply streamed did nothing. Now it queues the box's question
    (shown, removable), sent when the reply ends."""
    page.locator("#clear").click()
    _set_max_new_tokens(page, 3000)
    _send(page, "Talk for a long time")
    _wait_streaming(page, "Talk for a long time")
    page.fill("#input textarea", "Not this one")
    page.locator("#input textarea").press("Enter")
    page.locator("#queued_note").wait_for()
    page.locator("#queued_note button").click()  # taken out of the queue: a draft again
    assert page.locator("#queued_note").count() == 0
    page.keyboard.press("Escape")
    _wait_idle(page, 10)
    page.wait_for_timeout(500)
    assert _questions(page) == ["Talk for a long time"]
    assert page.locator("#input textarea").input_value() == "Not this one"

    page.fill("#input textarea", "")
    _send(page, "Talk again")
    _wait_streaming(page, "Talk again")
    page.fill("#input textarea", "Then this")
    page.locator("#input textarea").press("Enter")
    page.locator("#queued_note").wait_for()
    assert page.locator("#input.queued").count() == 1
    # gradio's "Loading response" dots, left between the turns while this one streamed: hidden.
    dots = "es => es.filter(e => e.offsetParent !== null).length"
    assert page.locator("#chatbot .pending").evaluate_all(dots) == 0
    _shot(page, "14-queued-question")
    assert _questions(page)[-1] == "Talk again"  # not sent yet
    page.keyboard.press("Escape")  # the reply ends (stopped): the queued question goes
    page.wait_for_function(
        "() => [...document.querySelectorAll(\"#chatbot [data-testid='user']\")]"
        ".some(u => u.innerText.includes('Then this'))",
        timeout=15000,
    )
    assert page.locator("#queued_note").count() == 0
    _wait_streaming(page, "Then this")
    page.keyboard.press("Escape")
    _wait_idle(page, 10)
    assert _questions(page)[-2:] == ["Talk again", "Then this"]


HOSTILE = (
    "**Bold** and `code`:\n\n```python\nprint('hi')\n```\n\n$$E = mc^2$$\n\n"
    "A price of $15.40 and $3.20, and a broken $$\\frac{$$ here.\n\n"
    "There is<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(100,200),(500,600)"
    "<|box_end|>.\n\n"
    "<script>window.__pwned = 'model script'</script>"
    "<img src=x onerror=\"window.__pwned = 'model img'\">"
)


def test_html_in_messages_never_runs_and_markdown_renders(browser_and_url, tmp_path):
    from testkit.checkpoints import build_tiny_checkpoint

    browser, _ = browser_and_url
    path = build_tiny_checkpoint(tmp_path / "scripted", "qwen3_vl", scripted_reply=HOSTILE)
    engine = load_engine(str(path), max_new_tokens=1024)  # the whole scripted reply
    settings = load_settings(["--max-new-tokens", "1024"], environ={})
    with launched_app(settings, engine) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#input textarea")
        _send(page, "<img src=x onerror=\"window.__pwned = 'user img'\"> hello")
        page.wait_for_selector("#chatbot .katex", timeout=30000)
        _wait_idle(page)
        _shot(page, "11-html-and-markdown")
        assert page.evaluate("() => window.__pwned") is None
        assert page.locator("#chatbot pre code").count() >= 1  # the code block
        assert page.locator("#chatbot strong", has_text="Bold").count() == 1
        reply = page.locator("#chatbot [data-testid='bot']").first
        assert "$15.40 and $3.20" in reply.inner_text()  # single dollars are currency
        assert "\\frac{" in reply.inner_text()  # a formula KaTeX cannot read: its source
        # Qwen2-VL's grounding tokens read as words.
        assert "There is the cat (100,200),(500,600)." in reply.inner_text()
        assert "<|" not in reply.inner_text()
        context.close()


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A loopback server that records every request: the page must send it none."""

    hits: ClassVar[list[str]] = []

    def do_GET(self):
        _Recorder.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_no_message_makes_the_browser_fetch_from_elsewhere(browser_and_url, tmp_path):
    from testkit.checkpoints import build_tiny_checkpoint

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.hits = []
    outside = f"http://127.0.0.1:{server.server_address[1]}"
    # A reply that echoes picture tags, as a prompt injected through an image or PDF could ask.
    echo = f'Sure. <img src="{outside}/model.png"> and ![x]({outside}/model-md.png) done.'
    browser, _ = browser_and_url
    path = build_tiny_checkpoint(tmp_path / "echo", "qwen3_vl", scripted_reply=echo)
    engine = load_engine(str(path), max_new_tokens=256)
    settings = load_settings(["--max-new-tokens", "256"], environ={})
    try:
        with launched_app(settings, engine) as url:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("#input textarea")
            _send(page, f'Look <img src="{outside}/user.png"> ![y]({outside}/user-md.png)')
            page.wait_for_selector("#chatbot :text('done.')", timeout=30000)
            _wait_idle(page)
            _shot(page, "13-remote-pictures-not-fetched")
            # The tags are in the page; the browser refused to fetch them.
            assert page.locator(f"#chatbot img[src^='{outside}']").count() >= 1
            context.close()
    finally:
        server.shutdown()
    assert _Recorder.hits == []


def test_closing_the_tab_stops_generation(browser_and_url):
    browser, url = browser_and_url
    context = browser.new_context()
    other = context.new_page()
    other.goto(url)
    other.wait_for_selector("#input textarea")
    _send(other, "Talk for a long time")
    other.wait_for_function(
        "() => { const b = document.querySelectorAll(\"#chatbot [data-testid='bot']\");"
        " return b.length && b[b.length - 1].innerText.length > 20; }",
        timeout=30000,
    )
    assert _generation_threads()
    _shot(other, "10-before-closing-tab")
    other.close()
    context.close()
    # A bound to catch a generation that never ends, not a timing: gradio's unload arrives
    # within about a second of the tab closing here.
    closed_at = time.perf_counter()
    while _generation_threads() and time.perf_counter() - closed_at < 15:
        time.sleep(0.05)
    assert not _generation_threads(), "closing the tab should end the generation"
