"""The launched page and its API over the scripted engine: the layers above the engines
(layout, events, replies) in well under a minute, no model loaded."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file

from app.settings import load_settings
from app.ui.panel import FIELD_NAMES
from testkit.launch import launched_app
from tests import media_factory as mf
from tests.panel import panel
from tests.scripted_engine import FAIL, ScriptedEngine

SCRIPT = "Two red squares on a white page."


@pytest.fixture(scope="module")
def page():
    engine = ScriptedEngine(script=SCRIPT)
    with launched_app(load_settings([], environ={}), engine) as url:
        yield Client(url, verbose=False, download_files=False), engine


def _text(message: dict) -> str:
    content = message["content"]
    parts = content if isinstance(content, list) else [content]
    return "".join(p if isinstance(p, str) else p.get("text") or "" for p in parts)


def _answers(history: list[dict]) -> list[str]:
    return [_text(m) for m in history if m["role"] == "assistant" and not m.get("metadata")]


def test_chat_api_streams_the_script_and_takes_every_panel_field(page):
    client, engine = page
    assert client.predict({"text": "Hi", "files": []}, [], api_name="/chat") == SCRIPT
    parameters = {
        p["parameter_name"]
        for p in client.view_api(return_format="dict")["named_endpoints"]["/chat"]["parameters"]
    }
    assert set(FIELD_NAMES) <= parameters
    # A panel value reaches the request the engine gets.
    client.predict({"text": "Again", "files": []}, [], video_fps=0.5, api_name="/chat")
    assert engine.requests[-1].budget.video_fps == 0.5


def test_the_page_sends_a_photo_and_keeps_the_question_when_the_engine_fails(page, tmp_path):
    client, engine = page
    photo = mf.make_image(tmp_path / "red.png", size=(320, 240))
    box = {"text": "What is this?", "files": [handle_file(str(photo))]}
    _, history = client.predict(box, [], *panel(), api_name="/ui_send")
    assert _answers(history)[-1] == SCRIPT
    assert [a.name for a in engine.requests[-1].turns[-1].attachments] == ["red.png"]
    box = {"text": f"Now {FAIL}", "files": []}
    _, history = client.predict(box, history, *panel(), api_name="/ui_send")
    # The failure is a message in the chat, under the question, which stays; the turn before
    # (photo, question, answer) is untouched.
    *_, question, failure = history
    assert _text(question) == f"Now {FAIL}"
    assert "asked to fail" in failure["metadata"]["title"]
    assert _answers(history) == [SCRIPT]
