"""Conversations people keep, in a real Chromium: saved chats (reload, switch, delete, files gone
from the server), editing an earlier question, export and import, another browser's chats, and
the page on a phone. Screenshots go to artifacts/browser/."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from app.settings import load_settings
from testkit.engines import load_engine
from testkit.launch import launched_app
from tests import media_factory as mf
from tests.browser.test_browser import (
    ARGS,
    ARTIFACTS,
    CHROMIUM,
    _require_browser,
    _send,
    _wait_idle,
)

pytestmark = pytest.mark.browser
PHONE = {"width": 390, "height": 844}
# gradio's name of a question's Edit button, in English and in Chinese.
EDIT = "#chatbot button[aria-label='Edit'], #chatbot button[aria-label='编辑']"


@pytest.fixture(scope="module")
def browser_and_url(tiny_checkpoint, tmp_path_factory):
    _require_browser()
    from playwright.sync_api import sync_playwright

    # The key of saved chats kept where this app keeps it, as on a user's machine.
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    settings = load_settings(["--max-new-tokens", "8"], environ={})
    engine = load_engine(str(tiny_checkpoint("qwen3_vl", suppress_eos=True)), max_new_tokens=8)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with launched_app(settings, engine) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser, url
        browser.close()


def _open(browser, url, viewport=None):
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#input textarea")
    return context, page


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _users(page) -> list[str]:
    return [m.inner_text().strip() for m in page.locator("#chatbot [data-testid='user']").all()]


def _ask(page, text: str, files=()) -> None:
    _send(page, text, files)
    page.wait_for_selector(f"#chatbot [data-testid='user'] :text('{text}')", timeout=15000)
    _wait_idle(page)
    page.wait_for_selector("#chatbot :text('tokens')", timeout=15000)


_ON_SCREEN = (
    "() => { const r = document.querySelector('#new_chat').getBoundingClientRect();"
    " return r.width > 0 && r.left >= 0 && r.right <= window.innerWidth; }"
)


def _sidebar(page) -> None:
    """The saved chats' panel, opened (a closed one sits off the screen)."""
    if not page.evaluate(_ON_SCREEN):
        page.locator(".sidebar .toggle-button").click()
        page.wait_for_function(_ON_SCREEN)


def _saved_titles(page) -> list[str]:
    _sidebar(page)
    return [t.strip() for t in page.locator("#chat_list label").all_inner_texts()]


def test_a_chat_survives_a_reload_and_two_chats_keep_their_own(browser_and_url):
    browser, url = browser_and_url
    context, page = _open(browser, url)
    _ask(page, "First question")
    page.reload()
    page.wait_for_selector("#chatbot [data-testid='user'] :text('First question')")
    _shot(page, "20-chat-after-reload")
    _sidebar(page)
    page.locator("#new_chat").click()
    page.wait_for_function("() => !document.querySelector(\"#chatbot [data-testid='user']\")")
    _ask(page, "Second question")
    assert _saved_titles(page) == ["Second question", "First question"]  # newest first
    page.locator("#chat_list label", has_text="First question").click()
    page.wait_for_selector("#chatbot [data-testid='user'] :text('First question')")
    assert _users(page) == ["First question"]
    page.locator("#chat_list label", has_text="Second question").click()
    page.wait_for_selector("#chatbot [data-testid='user'] :text('Second question')")
    assert _users(page) == ["Second question"]
    _shot(page, "21-two-chats")
    page.once("dialog", lambda dialog: dialog.dismiss())  # "Delete this chat?" No
    page.locator("#delete_chat").click()
    page.wait_for_timeout(1000)
    assert _saved_titles(page) == ["Second question", "First question"]
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#delete_chat").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#chat_list label').length === 1", timeout=10000
    )
    assert _saved_titles(page) == ["First question"]
    # The next chat opens.
    page.wait_for_selector("#chatbot [data-testid='user'] :text('First question')")
    assert page.locator("#chat_list input:checked").count() == 1
    # Another browser (a new profile) sees none of these.
    other, other_page = _open(browser, url)
    assert _saved_titles(other_page) == [] and _users(other_page) == []
    other.close()
    context.close()


def test_a_file_gone_from_the_server_is_named_and_the_chat_goes_on(browser_and_url, media):
    browser, url = browser_and_url
    context, page = _open(browser, url)
    _ask(page, "What colour?", [media / "red.jpg"])
    src = page.locator("#chatbot [data-testid='user'] img").first.get_attribute("src")
    uploaded = Path(src.split("file=", 1)[1].split("?")[0])
    assert uploaded.is_file()
    uploaded.unlink()  # the server's cache cleaned
    page.reload()
    page.wait_for_selector("#chatbot :text('red.jpg is no longer on the server')")
    _ask(page, "And now?")
    assert page.locator("#chatbot .error").count() == 0
    _shot(page, "22-file-gone")
    context.close()


def test_editing_an_earlier_question_answers_it_again_and_drops_what_came_after(
    browser_and_url,
):
    browser, url = browser_and_url
    context, page = _open(browser, url)
    _ask(page, "Question one")
    _ask(page, "Question two")
    page.locator("#chatbot [data-testid='user']").first.hover()
    page.locator("#chatbot button[aria-label='Edit']").first.click()  # the first question's
    warning = page.locator("#edit_warning")
    warning.wait_for(timeout=5000)
    assert "removes the 1 later turn" in warning.inner_text()  # said before it is saved
    page.locator("#chatbot textarea").first.fill("Question one, edited")
    page.locator("#chatbot textarea").first.press("Enter")  # Enter saves, as the box sends
    # The page shows the edited text at once, the later turn still under it, until the app's
    # answer replaces the chat: wait for that (Send is back before the app has even started).
    page.wait_for_function(
        "() => document.querySelectorAll(\"#chatbot [data-testid='user']\").length === 1",
        timeout=30000,
    )
    page.wait_for_selector("#chatbot [data-testid='user'] :text('Question one, edited')")
    _wait_idle(page)
    page.wait_for_selector("#chatbot :text('tokens')")
    assert _users(page) == ["Question one, edited"]  # and the warning went with the edit
    assert page.locator("#edit_warning").count() == 0
    _shot(page, "23-edited")
    context.close()


def test_export_then_import_gives_the_same_conversation(browser_and_url, media, tmp_path):
    browser, url = browser_and_url
    context, page = _open(browser, url)
    _ask(page, "Describe it", [media / "green.png"])
    _sidebar(page)
    with page.expect_download(timeout=15000) as download:  # one click, a file named after it
        page.locator("#export_json").click()
    assert download.value.suggested_filename == "Describe it.json"
    exported = Path(download.value.path()).read_text()
    document = json.loads(exported)
    roles = [(m["role"], "metadata" in m) for m in document["messages"]]
    # The photo, the question, the answer, and its stats line (shown again, never sent).
    assert roles == [("user", False), ("user", False), ("assistant", False), ("assistant", True)]
    saved = tmp_path / "conversation.json"
    saved.write_text(exported)
    page.locator("#new_chat").click()
    page.set_input_files(
        "#import_chat input[type=file], input[type=file][accept*='json']", str(saved)
    )
    page.wait_for_selector("#chatbot [data-testid='user'] :text('Describe it')", timeout=15000)
    _sidebar(page)
    # The list is updated by the same event as the chat area, but drawn a moment later.
    page.wait_for_function("document.querySelectorAll('#chat_list label').length === 2")
    # The exported chat and its imported copy, told apart.
    assert _saved_titles(page) == ["Describe it (imported)", "Describe it"]
    with page.expect_download(timeout=15000) as download:
        page.locator("#export_json").click()
    assert download.value.suggested_filename == "Describe it (imported).json"
    again = json.loads(Path(download.value.path()).read_text())
    assert again["messages"] == document["messages"]
    _shot(page, "24-imported")
    context.close()


def _no_sideways_scrolling(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_the_page_on_a_phone(browser_and_url, media):
    browser, url = browser_and_url
    context, page = _open(browser, url, PHONE)
    _shot(page, "30-phone-loaded")
    assert _no_sideways_scrolling(page)
    _ask(page, "What is this?", [media / "red.jpg"])
    _shot(page, "31-phone-reply")
    assert _no_sideways_scrolling(page)
    page.locator("#settings").get_by_text("Settings").first.click()
    page.locator("#max_new_tokens").wait_for(state="visible")
    page.locator("#max_new_tokens").scroll_into_view_if_needed()
    _shot(page, "32-phone-settings")
    assert _no_sideways_scrolling(page)
    _sidebar(page)
    assert page.locator("#new_chat").is_visible()
    _shot(page, "33-phone-chats")
    assert _no_sideways_scrolling(page)
    context.close()


def test_prices_and_formulas_in_a_question_stay_as_typed(browser_and_url):
    browser, url = browser_and_url
    context, page = _open(browser, url)
    typed = "The total is $15.40 and the tip was $3.20, so I paid $18.60. Also $$x^2$$ here"
    _send(page, typed)
    page.wait_for_selector("#chatbot [data-testid='user'] :text('The total is')", timeout=15000)
    _wait_idle(page)
    question = page.locator("#chatbot [data-testid='user']").first
    assert question.inner_text() == typed  # a person's words as typed (#41 item 13)
    assert question.locator(".katex").count() == 0
    _shot(page, "25-prices-and-math")
    context.close()


def _toast_text(page) -> str:
    toast = page.locator("[data-testid='toast-body']").first
    toast.wait_for(timeout=15000)
    return toast.inner_text()


def test_a_bad_import_says_why_and_the_next_action_works(browser_and_url, tmp_path):
    browser, url = browser_and_url
    context, page = _open(browser, url)
    _ask(page, "Kept question")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _sidebar(page)
    page.set_input_files(
        "#import_chat input[type=file], input[type=file][accept*='json']", str(bad)
    )
    message = _toast_text(page)
    assert "bad.json: not a conversation exported by this app" in message
    assert "Export JSON" in message  # what to do instead
    _shot(page, "26-bad-import")
    # No bare "Error" badge on the list or the chat, and both as they were.
    assert page.get_by_text("Error", exact=True).count() == 0
    assert _users(page) == ["Kept question"]
    assert _saved_titles(page) == ["Kept question"]
    page.locator("#new_chat").click()
    page.wait_for_function("() => !document.querySelector(\"#chatbot [data-testid='user']\")")
    _ask(page, "Next question")
    assert _saved_titles(page) == ["Next question", "Kept question"]
    context.close()


_FIRST_SCREEN = """() => {
  const bottom = s => document.querySelector(s).getBoundingClientRect().bottom;
  const toggle = document.querySelector(".sidebar .toggle-button")
    .getBoundingClientRect();
  return {box: bottom('#input textarea'), send: bottom('#input button.submit-button'),
          attach: bottom('#input button.upload-button'), height: window.innerHeight,
          toggle: [toggle.left, toggle.right], width: window.innerWidth,
          banner: document.querySelector('#banner summary').getBoundingClientRect().height};
}"""


@pytest.mark.parametrize("viewport", [PHONE, {"width": 1366, "height": 900}])
def test_a_fresh_page_shows_the_box_attach_and_send_on_its_first_screen(browser_and_url, viewport):
    browser, url = browser_and_url
    context, page = _open(browser, url, viewport)
    page.wait_for_selector("#banner")  # the trial's banner and the CPU's note: one line
    where = page.evaluate(_FIRST_SCREEN)
    _shot(page, f"34-first-screen-{viewport['width']}")
    assert max(where["box"], where["send"], where["attach"]) <= where["height"], where
    assert where["banner"] < 40, where  # one line; the whole text a click away
    assert where["toggle"][0] >= 0 and where["toggle"][1] <= where["width"], where
    page.locator("#banner summary").click()
    assert "random weights" in page.locator("#banner").inner_text()
    # One "Settings" on the page, the app's (gradio's footer had a second).
    assert page.get_by_text("Settings", exact=True).count() == 1
    context.close()


def test_keys_stop_a_reply_and_start_a_new_chat_and_send_and_stop_say_what_they_do(
    browser_and_url,
):
    browser, url = browser_and_url
    context, page = _open(browser, url)
    assert page.locator("#input [aria-label='Send the message']").count() == 1
    assert "Esc stops the reply" in page.locator("#keys").inner_text()
    _ask(page, "Before the new chat")
    page.keyboard.press("Alt+KeyN")
    page.wait_for_function("() => !document.querySelector(\"#chatbot [data-testid='user']\")")
    context.close()


def test_thumbs_are_kept_with_the_chat_and_exported_with_it(browser_and_url, tmp_path):
    browser, url = browser_and_url
    context, page = _open(browser, url)
    _ask(page, "Thumbs question")
    assert page.locator("#chatbot button[aria-label='Like']").get_attribute("aria-pressed") == (
        "false"
    )
    up = page.locator("#chatbot button[aria-label='Like']").first.bounding_box()
    down = page.locator("#chatbot button[aria-label='Dislike']").first.bounding_box()
    assert up["x"] < down["x"]  # up, then down (gradio drew down first)
    page.locator("#chatbot button[aria-label='Like']").first.click()
    page.locator("#chatbot button[aria-label='Liked'][aria-pressed='true']").wait_for(timeout=10000)
    page.wait_for_timeout(1000)  # the like event keeps it in the browser's store
    page.reload()
    page.wait_for_selector("#chatbot [data-testid='user'] :text('Thumbs question')")
    page.locator("#chatbot button[aria-label='Liked']").wait_for(timeout=10000)
    _shot(page, "27-thumbs-after-reload")
    _sidebar(page)
    with page.expect_download(timeout=15000) as download:
        page.locator("#export_json").click()
    document = json.loads(Path(download.value.path()).read_text())
    assert document["feedback"] == ["Like"]
    saved = tmp_path / "liked.json"
    saved.write_text(json.dumps(document))
    page.locator("#new_chat").click()
    page.set_input_files(
        "#import_chat input[type=file], input[type=file][accept*='json']", str(saved)
    )
    page.wait_for_selector("#chatbot [data-testid='user'] :text('Thumbs question')")
    page.locator("#chatbot button[aria-label='Liked']").wait_for(timeout=10000)
    context.close()


def test_settings_persist_in_the_browser_like_the_chats(browser_and_url):
    from tests.browser.test_browser import _set_max_new_tokens

    browser, url = browser_and_url
    context, page = _open(browser, url)
    _set_max_new_tokens(page, 5)
    prompt = page.locator("#system_prompt textarea")
    prompt.fill("Answer like a pirate.")
    prompt.press("Tab")
    page.wait_for_timeout(1000)  # each change is kept in the browser's store
    page.reload()
    page.wait_for_selector("#input textarea")
    page.locator("#settings").get_by_text("Settings").first.click()
    page.wait_for_function(
        "() => document.querySelector('#max_new_tokens input[type=number]')?.value === '5'"
    )
    assert page.locator("#system_prompt textarea").input_value() == "Answer like a pirate."
    _ask(page, "With the kept settings")
    assert page.locator("#chatbot :text('5 tokens')").count() == 1  # and a reply uses them
    # Another browser starts from the defaults.
    other, other_page = _open(browser, url)
    other_page.locator("#settings").get_by_text("Settings").first.click()
    other_page.locator("#system_prompt textarea").wait_for()
    assert other_page.locator("#system_prompt textarea").input_value() == ""
    other.close()
    context.close()


def _open_camera(page, widget: str) -> None:
    """The camera panel opened and `widget` (#camera_photo or #camera_clip) showing the fake
    camera's picture, playing (a shot or recording before that is empty)."""
    page.locator("#camera").get_by_text("Camera").first.click()
    page.locator(widget).get_by_text("Click to Access Webcam").first.click()
    page.wait_for_function(
        "w => { const v = document.querySelector(w + ' video');"
        " return v && v.readyState >= 2 && v.videoWidth > 0; }",
        arg=widget,
        timeout=15000,
    )


def test_the_camera_button_takes_a_photo_into_the_box_and_it_is_sent(browser_and_url):
    # Chromium's fake camera (a test pattern), allowed without asking:
    # tests/browser/test_browser.ARGS.
    browser, url = browser_and_url
    context, page = _open(browser, url, PHONE)
    _open_camera(page, "#camera_photo")
    page.locator("#camera_photo button[aria-label='capture photo']").click()
    page.wait_for_selector("#input .thumbnail-item, #input img", timeout=15000)
    _shot(page, "35-camera-photo-in-the-box")
    page.fill("#input textarea", "What did the camera see?")
    page.locator("#input textarea").press("Enter")
    page.wait_for_selector("#chatbot [data-testid='user'] img", timeout=15000)
    _wait_idle(page)
    page.wait_for_selector("#chatbot :text('tokens')", timeout=15000)
    assert page.locator("#chatbot .error").count() == 0
    assert "What did the camera see?" in " ".join(_users(page))
    context.close()


def test_the_camera_records_a_short_clip_into_the_box_and_it_is_read(browser_and_url):
    """Chromium's fake camera, recorded for two seconds (a webm from the browser's
    MediaRecorder): into the box as it was recorded (gradio would mirror it with an ffmpeg
    program this machine lacks), then read by the app's own video path."""
    browser, url = browser_and_url
    context, page = _open(browser, url, PHONE)
    _open_camera(page, "#camera_clip")
    record = page.locator("#camera_clip button[aria-label='start recording']")  # then Stop
    record.click()
    page.wait_for_timeout(2000)
    record.click()
    page.wait_for_selector("#input .thumbnail-item, #input video", timeout=20000)
    assert page.locator("#camera_clip .error").count() == 0
    _shot(page, "38-camera-clip-in-the-box")
    _ask(page, "What happens in the clip?")
    assert page.locator("#chatbot .error").count() == 0
    # Its frames were read: the stats line counts the clip's visual tokens.
    page.locator("#chatbot", has_text=re.compile(r"\.webm: [1-9]\d*\)")).wait_for(timeout=15000)
    context.close()


@pytest.mark.parametrize(
    ("locale", "new_chat", "send", "settings", "confirm", "said"),
    [
        (
            "en-US",
            "New chat",
            "Send",
            "Settings",
            "Delete this chat?",
            {
                "banner": "Offline trial",
                "welcome": "Ask about images, videos and PDFs.",
                "refused": "not an image, video or PDF",
                "stats": "tokens",
                "drops": "removes the 1 later turn",
                "save": "Save",
                "cancel": "Cancel",
            },
        ),
        (
            "zh-CN",
            "新对话",
            "发送",
            "设置",
            "删除此对话？",
            {
                "banner": "离线试用",
                "welcome": "就图片、视频和 PDF 提问。",
                "refused": "不是本应用能读取的图片、视频或 PDF",
                "stats": "个 token",
                "drops": "删除后面的 1 轮对话",
                "save": "保存",
                "cancel": "取消",
            },
        ),
    ],
)
def test_the_page_speaks_the_browsers_language(
    browser_and_url, tmp_path, locale, new_chat, send, settings, confirm, said
):
    """The labels (gradio's i18n), the page's own dialog, and the app's own messages in the
    chat: the banner, an error, the stats line."""
    browser, url = browser_and_url
    context = browser.new_context(viewport=PHONE, locale=locale)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#input textarea")
    page.locator("#input button", has_text=send).wait_for(timeout=15000)
    assert page.locator("#settings").get_by_text(settings).count() >= 1
    page.locator("#banner summary", has_text=said["banner"]).wait_for(timeout=15000)
    # The empty chat says what to do (before: a large empty box).
    page.locator("#chatbot", has_text=said["welcome"]).wait_for(timeout=5000)
    not_media = tmp_path / "notes.jpg"
    not_media.write_text("a shopping list, not a photo")
    _send(page, "What is this?", [not_media])
    page.locator("#chatbot", has_text=said["refused"]).wait_for(timeout=15000)
    _wait_idle(page, send=send)
    _ask_in(page, "And this?", said["stats"], send)
    _ask_in(page, "And that?", said["stats"], send)
    _shot(page, f"36-language-{locale}")
    # An edit of a question of text alone (in place: the first, with its file, is edited in
    # the box) warns of the turn it drops, its ✓ and ✕ worded.
    page.locator("#chatbot [data-testid='user']").nth(1).hover()
    page.locator(EDIT).nth(1).click()
    page.locator("#edit_warning", has_text=said["drops"]).wait_for(timeout=5000)
    page.locator("#chatbot .edit-word", has_text=said["save"]).wait_for(timeout=5000)
    _shot(page, f"37-edit-{locale}")
    page.locator("#chatbot .edit-word", has_text=said["cancel"]).click()
    page.locator("#edit_warning").wait_for(state="detached", timeout=5000)
    assert _users(page)[-1] == "And that?"  # cancelled: nothing dropped
    _sidebar(page)
    assert page.locator("#new_chat").inner_text().strip() == new_chat
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.locator("#delete_chat").click()
    page.wait_for_function("() => true")  # the dialog is handled before the click returns
    assert asked and asked[0].startswith(confirm)  # the page's own dialog speaks it too
    context.close()


def _ask_in(page, text: str, stats: str, send: str) -> None:
    """Ask `text` and wait for the reply's stats line, worded `stats` in the page's language
    (whose Send button says `send`)."""
    _send(page, text)
    page.wait_for_selector(f"#chatbot [data-testid='user'] :text('{text}')", timeout=15000)
    _wait_idle(page, send=send)
    page.locator("#chatbot", has_text=stats).wait_for(timeout=15000)


def test_a_run_with_another_key_leaves_the_saved_chats_of_the_first(
    tiny_checkpoint, browser_and_url
):
    # Before, a run with another --state-secret (a container started once without its volume)
    # wrote an empty store over every visitor's saved chats. The same origin (host and port)
    # for all three runs, as a browser sees one server restarted.
    from testkit.launch import free_port

    browser, _ = browser_and_url
    engine = load_engine(str(tiny_checkpoint("qwen3_vl", suppress_eos=True)), max_new_tokens=8)
    port = free_port()
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()

    def run(secret: str):
        settings = load_settings(["--max-new-tokens", "8", "--state-secret", secret], environ={})
        return launched_app(settings, engine, port=port)

    def visit(url: str) -> None:
        page.goto(url)
        page.wait_for_selector("#input textarea")
        page.wait_for_timeout(1500)  # the saved chats restored

    with run("first key") as url:
        visit(url)
        _ask(page, "Kept question")
    with run("another key") as url:
        visit(url)
        assert _users(page) == [] and _saved_titles(page) == []
        _ask(page, "Question under another key")
    with run("first key") as url:
        visit(url)
        page.wait_for_selector("#chatbot [data-testid='user'] :text('Kept question')")
        assert "Kept question" in _saved_titles(page)
        _shot(page, "27-chats-kept-across-keys")
    context.close()


def test_a_question_asked_when_the_app_stops_is_kept_and_marked_interrupted(
    tiny_checkpoint, browser_and_url
):
    # Before, a chat was saved only once its reply ended: after a restart mid-reply the restored
    # chat had lost the question being answered. The same origin for both runs, as a browser
    # sees one server restarted.
    from testkit.launch import free_port
    from tests.scripted_engine import ScriptedEngine

    browser, _ = browser_and_url
    port = free_port()
    settings = load_settings(["--state-secret", "one key"], environ={})
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    slow = ScriptedEngine(script="word " * 200, delay_s=0.2)  # a reply of 40 s
    with launched_app(settings, slow, port=port) as url:
        page.goto(url)
        page.wait_for_selector("#input textarea")
        _send(page, "Question in flight")
        page.wait_for_selector("#chatbot :text('word word')", timeout=15000)
    engine = load_engine(str(tiny_checkpoint("qwen3_vl", suppress_eos=True)), max_new_tokens=8)
    with launched_app(settings, engine, port=port) as url:
        page.goto(url)
        page.wait_for_selector("#chatbot [data-testid='user'] :text('Question in flight')")
        page.wait_for_selector("#chatbot :text('Interrupted')")
        assert _saved_titles(page) == ["Question in flight"]
        _shot(page, "28-question-kept-across-a-restart")
        # Regenerate asks it again; the answer takes the note's place.
        page.locator("#regenerate").click()
        page.wait_for_selector("#chatbot :text('tokens')", timeout=30000)
        _wait_idle(page)
        assert page.locator("#chatbot :text('Interrupted')").count() == 0
        assert _users(page) == ["Question in flight"]
    context.close()


def test_editing_a_question_with_a_photo_keeps_the_photo_and_asks_again(browser_and_url, media):
    """Edit on a photo turn puts the question and its photo in the box (gradio's own edit sent
    nothing for a turn with a file); Send answers it again in its place, the later turn gone.
    Cancel editing leaves the chat as it was."""
    browser, url = browser_and_url
    context, page = _open(browser, url)
    _ask(page, "How many chairs?", [media / "red.jpg"])
    _ask(page, "And tables?")
    edit = page.locator(EDIT).first

    edit.click()  # first: Cancel editing
    page.locator("#editing").wait_for(state="visible")
    page.locator("#cancel_edit").click()
    page.locator("#editing").wait_for(state="hidden")
    page.fill("#input textarea", "")
    page.locator("#input button[aria-label^='Remove'], #input .delete-button").first.click()
    assert _users(page)[-1] == "And tables?"

    edit.click()
    page.locator("#editing").wait_for(state="visible")
    assert page.locator("#input textarea").input_value() == "How many chairs?"
    assert page.locator("#input .thumbnail-item").count() == 1
    _shot(page, "edit-photo-turn")
    page.fill("#input textarea", "How many desks?")
    page.locator("#input textarea").press("Enter")
    page.wait_for_function(
        "() => [...document.querySelectorAll(\"#chatbot [data-testid='user']\")]"
        ".every(u => !u.innerText.includes('tables'))",
        timeout=30000,
    )
    _wait_idle(page)
    assert [u for u in _users(page) if u] == ["How many desks?"]
    assert page.locator("#chatbot [data-testid='user'] img").count() == 1
    # The photo reached the model again: the new reply's stats count its visual tokens.
    assert "red.jpg" in page.locator("#chatbot [data-testid='bot']").last.inner_text()
    assert not page.locator("#editing").is_visible()
    context.close()


@pytest.mark.parametrize(
    ("viewport", "name"), [({"width": 1366, "height": 900}, "desktop"), (PHONE, "phone")]
)
def test_the_first_screen_has_the_welcome_and_the_examples_and_one_fills_the_box(
    browser_and_url, viewport, name
):
    browser, url = browser_and_url
    context, page = _open(browser, url, viewport)
    try:
        page.get_by_text("Ask about images, videos and PDFs.").wait_for()
        examples = page.locator("#chatbot .examples button.example")
        examples.first.wait_for()
        assert examples.count() == 4
        # Before: under the box, the first example started below the fold at 1366x900 and
        # was off the phone's first screen.
        top = examples.first.bounding_box()
        assert top is not None and top["y"] + top["height"] <= viewport["height"], top
        page.screenshot(path=str(ARTIFACTS / f"50-first-screen-{name}.png"))
        page.fill("#input textarea", "my draft")
        examples.filter(has_text="Read the receipt").first.click()
        page.wait_for_function(
            "() => document.querySelector('#input textarea').value.startsWith('Read the receipt')"
        )
        assert page.locator("#input textarea").input_value().endswith("my draft")  # kept
        page.locator("#input .thumbnail-item, #input img").first.wait_for(timeout=15000)
        assert page.locator("#chatbot [data-testid='user']").count() == 0  # nothing was sent
    finally:
        context.close()


def test_the_side_panels_toggle_says_what_it_opens(browser_and_url):
    browser, url = browser_and_url
    context, page = _open(browser, url, PHONE)
    try:
        # Before: a bare chevron at the page's edge, named "Toggle Sidebar".
        toggle = page.get_by_role("button", name="Chats")
        toggle.wait_for()
        assert toggle.inner_text().strip() == "Chats"
        toggle.click()
        page.locator("#new_chat").wait_for(state="visible")
        page.screenshot(path=str(ARTIFACTS / "51-chats-toggle-phone.png"))
    finally:
        context.close()


_ENGLISH_NAMES = """english => {
  const left = [];
  for (const a of ['aria-label', 'title']) {
    document.querySelectorAll(`[${a}]`).forEach(e => {
      const v = e.getAttribute(a);
      if (english.some(k => v === k || (k.endsWith(': ') && v.startsWith(k)))) left.push(v);
    });
  }
  const texts = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (texts.nextNode()) {
    const t = texts.currentNode.textContent.trim();
    if (english.includes(t)) left.push(t);
  }
  return left;
}"""


# A reply has come and ended (Send is on offer before a reply starts too: `_wait_idle` alone
# can return before it has).
_REPLY_ENDED = (
    "() => document.querySelector('#chatbot .bot-row') &&"
    " !document.querySelector('#input .stop-button')"
)


def test_gradios_own_names_and_notes_are_in_chinese_on_the_chinese_page(browser_and_url):
    from app.ui.words import GRADIO_IN_CHINESE

    browser, url = browser_and_url
    context = browser.new_context(viewport={"width": 1366, "height": 900}, locale="zh-CN")
    page = context.new_page()
    try:
        page.goto(url)
        page.wait_for_selector("#input textarea")
        _send(page, "你好")
        page.wait_for_function(_REPLY_ENDED, timeout=30000)
        _wait_idle(page, send="发送")
        # A thumb says whether it is pressed here too, in Chinese ("Liked" stayed English).
        page.locator("#chatbot button[aria-label='赞'][aria-pressed='false']").first.click()
        page.locator("#chatbot button[aria-label='已赞'][aria-pressed='true']").wait_for()
        page.locator("#camera").click()
        page.locator("#camera").get_by_text("点击使用摄像头").first.wait_for()
        # Before: "Copy message", "Upload a file", "Click to Access Webcam", "common.complete"
        # (gradio's screen-reader note) and a dozen more stayed English here.
        left = page.evaluate(_ENGLISH_NAMES, list(GRADIO_IN_CHINESE))
        assert left == [], left
        english = browser.new_context(viewport={"width": 1366, "height": 900}, locale="en-US")
        other = english.new_page()
        other.goto(url)
        other.locator("#input button[aria-label='Upload a file']").wait_for(state="attached")
        english.close()
    finally:
        context.close()


def test_every_attachment_shows_its_name_in_the_box_and_the_chat(browser_and_url, tmp_path):
    browser, url = browser_and_url
    context, page = _open(browser, url)
    files = [
        mf.make_image(tmp_path / "red.jpg"),
        mf.make_pdf(tmp_path / "report.pdf", pages=1),
        mf.make_video(tmp_path / "clip.mp4"),
    ]
    try:
        page.set_input_files("#input input[type=file]", [str(f) for f in files])
        # Before: a PDF and a video in the box were the same bare icons, without a name.
        page.wait_for_function(
            "() => [...document.querySelectorAll('#input .thumbnail-wrapper')]"
            ".map(w => w.dataset.name).join() === 'red.jpg,report.pdf,clip.mp4'",
            timeout=15000,
        )
        page.fill("#input textarea", "What are these?")
        page.locator("#input textarea").press("Enter")
        _wait_idle(page)
        # In the chat, the video (a bare player before) and the photo say their names.
        page.wait_for_function(
            "() => { const n = [...document.querySelectorAll('#chatbot [data-attachment-name]')]"
            ".map(e => e.dataset.attachmentName);"
            " return n.includes('clip.mp4') && n.includes('red.jpg'); }",
            timeout=15000,
        )
        page.screenshot(path=str(ARTIFACTS / "52-attachment-names.png"))
    finally:
        context.close()


def _branch_from(page, message: int) -> None:
    """Continue in a new chat from the `message`-th message row (questions and replies, from 0)."""
    page.locator("#chatbot .message-buttons .branch-button").nth(message).click()


def test_a_chat_continues_in_a_new_chat_from_a_reply_or_a_question(browser_and_url, media):
    browser, url = browser_and_url
    context, page = _open(browser, url)
    try:
        _ask(page, "Branch one", [media / "red.jpg"])
        _ask(page, "Branch two")
        _ask(page, "Branch three")
        page.locator("#chatbot button[aria-label='Like']").first.click()  # the first reply's
        page.locator("#chatbot button[aria-label='Liked']").wait_for(timeout=10000)
        page.wait_for_timeout(1000)  # the like event keeps it in the browser's store
        button = page.locator("#chatbot .branch-button").first
        assert button.get_attribute("aria-label") == "Continue in a new chat from here"
        # From the second reply: a new chat holding the first two turns, the photo too.
        _branch_from(page, 3)
        page.wait_for_function(
            "() => ![...document.querySelectorAll(\"#chatbot [data-testid='user']\")]"
            ".some(u => u.innerText.includes('Branch three'))",
            timeout=15000,
        )
        assert [u for u in _users(page) if u] == ["Branch one", "Branch two"]
        assert page.locator("#chatbot [data-testid='user'] img").count() == 1
        assert page.locator("#chatbot .bot-row").count() == 2
        assert page.locator("#chatbot button[aria-label='Liked']").count() == 1  # its thumb
        assert _saved_titles(page) == ["Branch one (branch)", "Branch one"]
        page.screenshot(path=str(ARTIFACTS / "53-branch-from-a-reply.png"))
        _ask(page, "Branch four")  # the branch goes on; the photo is read again
        assert "red.jpg" in page.locator("#chatbot [data-testid='bot']").last.inner_text()
        # The original is as it was.
        page.locator("#chat_list label", has_text="Branch one").last.click()
        page.wait_for_selector("#chatbot [data-testid='user'] :text('Branch three')")
        assert [u for u in _users(page) if u] == ["Branch one", "Branch two", "Branch three"]
        # From a question: the turns before it, and the question in the box (a draft kept).
        page.fill("#input textarea", "my draft")
        _branch_from(page, 2)
        page.wait_for_function(
            "() => document.querySelector('#input textarea').value.startsWith('Branch two')",
            timeout=15000,
        )
        assert page.locator("#input textarea").input_value() == "Branch two\n\nmy draft"
        assert [u for u in _users(page) if u] == ["Branch one"]
        assert len(_saved_titles(page)) == 3
    finally:
        context.close()


_PREVIEWS = """() => {
  const v = document.querySelector("#chatbot [data-testid='user'] video");
  const page = document.querySelector('#chatbot img.page-preview');
  return {
    poster: (v && v.poster || '').slice(0, 23),
    length: v && v.parentElement.dataset.length,
    time: v && v.closest('.wrap')?.querySelector('.controls .time')?.textContent,
    page: page ? page.naturalWidth > 0 && page.naturalHeight > page.naturalWidth : false,
    type: document.querySelector('#chatbot .file-container .file-type')?.textContent,
    names: [...document.querySelectorAll('#chatbot [data-attachment-name]')].map(
      e => e.dataset.attachmentName),
  };
}"""


def test_a_video_shows_a_still_frame_and_its_length_and_a_pdf_its_first_page(
    browser_and_url, tmp_path
):
    """An MPEG-4 Part 2 clip (Chromium plays none) was an empty grey player saying
    "0:00 / NaN:NaN"; a PDF a bare link. Both now show what the app's decoders read."""
    browser, url = browser_and_url
    context, page = _open(browser, url)
    clip = mf.make_video(tmp_path / "old-camera.mp4", seconds=3.0, codec="mpeg4")
    report = mf.make_pdf(tmp_path / "report.pdf", pages=3)
    try:
        _send(page, "What are these?", [clip, report])
        _wait_idle(page)
        page.wait_for_function(f"() => ({_PREVIEWS})().page === true", timeout=20000)
        page.wait_for_function(f"() => ({_PREVIEWS})().poster.startsWith('data:image/jpeg')")
        shown = page.evaluate(_PREVIEWS)
        assert shown["length"] == "0:03", shown
        assert shown["type"] == "PDF · 3 pages", shown
        assert "NaN" not in (shown["time"] or ""), shown
        assert shown["names"] == ["old-camera.mp4"], shown  # the page's picture is no file
        page.screenshot(path=str(ARTIFACTS / "54-video-poster-and-pdf-page.png"))
    finally:
        context.close()


TYPED = "<b>bold</b> and **stars** & <img src=x> `code`\nsecond line\n\n  indented $x^2$ \\(y\\)"


@pytest.mark.parametrize(("locale", "send"), [("en-US", "Send"), ("zh-CN", "发送")])
def test_a_question_shows_as_typed_not_as_markdown_or_html(browser_and_url, locale, send):
    """Before: "<b>" turned bold, "**" vanished, an <img> tag was a broken picture."""
    browser, url = browser_and_url
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, locale=locale)
    page = context.new_page()
    try:
        page.goto(url)
        page.wait_for_selector("#input textarea")
        _send(page, TYPED)
        page.wait_for_function(_REPLY_ENDED, timeout=30000)
        _wait_idle(page, send=send)
        question = page.locator("#chatbot [data-testid='user']").last
        page.wait_for_function(
            "t => document.querySelector(\"#chatbot [data-testid='user'] .as-typed\")"
            "?.textContent === t",
            arg=TYPED,
        )
        assert question.inner_text() == TYPED
        assert (
            question.locator("strong, b, code, img").evaluate_all(
                "es => es.filter(e => e.offsetParent !== null).length"
            )
            == 0
        )
        if locale == "en-US":
            page.screenshot(path=str(ARTIFACTS / "55-question-as-typed.png"))
        # Edit holds the question as typed, in place (a tag in the text is no file).
        page.locator(EDIT).last.click()
        assert page.locator("#chatbot textarea").input_value() == TYPED
    finally:
        context.close()


def test_the_example_questions_are_in_the_pages_language(browser_and_url):
    """Before: the Chinese page's example questions, and what they put in the box, were
    English."""
    from app.ui.words import CHART_QUESTION

    browser, url = browser_and_url
    context = browser.new_context(viewport={"width": 1366, "height": 900}, locale="zh-CN")
    page = context.new_page()
    box = page.locator("#input textarea")
    try:
        page.goto(url)
        examples = page.locator("#chatbot .examples button.example")
        examples.first.wait_for()
        page.wait_for_function(
            "q => document.querySelector('#chatbot .examples button.example')"
            ".innerText.trim() === q",
            arg=CHART_QUESTION.chinese,
        )
        examples.first.click()
        page.wait_for_function(
            "q => document.querySelector('#input textarea').value === q",
            arg=CHART_QUESTION.chinese,
        )
        box.fill("")
        # The examples under the box too.
        page.locator(".container.gallery p", has_text=CHART_QUESTION.chinese).first.click()
        page.wait_for_function(
            "q => document.querySelector('#input textarea').value === q",
            arg=CHART_QUESTION.chinese,
        )
        assert str(CHART_QUESTION) not in page.locator("body").inner_text()
    finally:
        context.close()
